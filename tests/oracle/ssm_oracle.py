"""Batch oracle over sev-snp-measure's library, for the differential tests.

Reads one JSON case per line on stdin and writes one line per case on stdout: the
launch digest in hex, or "error: <message>". Running many cases in one process
keeps the tests fast; a few cases also go through the sev-snp-measure command
itself to check the command-line interface.

Case fields: mode (sev|seves|snp), ovmf, kernel, initrd, append (text or null),
vcpus, vcpu_sig, guest_features, vmm_type (QEMU|ec2|gce).
"""
import json
import sys

from sevsnpmeasure import guest
from sevsnpmeasure.sev_mode import SevMode
from sevsnpmeasure.vmm_types import VMMType


def main() -> int:
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        case = json.loads(line)
        try:
            digest = guest.calc_launch_digest(
                SevMode.from_str(case["mode"]),
                case.get("vcpus"),
                case.get("vcpu_sig") or 0,
                case["ovmf"],
                case.get("kernel"),
                case.get("initrd"),
                case.get("append"),
                case.get("guest_features", 1),
                vmm_type=VMMType[case.get("vmm_type", "QEMU")],
            )
            print(digest.hex(), flush=True)
        except Exception as e:  # the oracle reports every failure as data
            print("error: " + (str(e) or type(e).__name__).replace("\n", " "), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
