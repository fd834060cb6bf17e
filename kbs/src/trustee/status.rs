//! The admin API's view of the Trustee writer: what each Trustee holds and
//! should hold, the TCBs nodes reported, the operator's pins.

use super::sync::InstanceStatus;
use crate::broker::Broker;
use crate::store::{NodeTcb, PlatformTcb, StoreError, TcbPin};
use kbs_proto::kbsadmin as pb;
use serde_json::Value;

fn json(values: &[Value]) -> String {
    serde_json::to_string(values).unwrap_or_default()
}

fn instance(s: &InstanceStatus) -> pb::TrusteeInstance {
    let names = s
        .want
        .0
        .iter()
        .map(|(name, want)| {
            let diff = s.differences.iter().find(|d| &d.name == name);
            pb::TrusteeName {
                name: name.clone(),
                want: json(want),
                held: s
                    .held
                    .get(name)
                    .cloned()
                    .flatten()
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                missing: diff.map(|d| json(&d.missing)).unwrap_or_default(),
                extra: diff.map(|d| json(&d.extra)).unwrap_or_default(),
            }
        })
        .collect();
    pb::TrusteeInstance {
        target: s.target.clone(),
        reachable: s.reachable,
        last_error: s.last_error.clone().unwrap_or_default(),
        last_write_at: s.last_write_at.unwrap_or(0),
        last_check_at: s.last_check_at.unwrap_or(0),
        policy: s
            .policy
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "not read yet".into()),
        names,
        writes: s.writes,
    }
}

/// The proto form of a TCB.
pub fn tcb_to_proto(t: &PlatformTcb, product: &str) -> pb::PlatformTcb {
    pb::PlatformTcb {
        bootloader: u32::from(t.bootloader),
        tee: u32::from(t.tee),
        snp: u32::from(t.snp),
        microcode: u32::from(t.microcode),
        product: product.to_string(),
    }
}

/// A TCB from its proto form; `None` when a field does not fit a byte.
pub fn tcb_from_proto(t: &pb::PlatformTcb) -> Option<PlatformTcb> {
    Some(PlatformTcb {
        bootloader: u8::try_from(t.bootloader).ok()?,
        tee: u8::try_from(t.tee).ok()?,
        snp: u8::try_from(t.snp).ok()?,
        microcode: u8::try_from(t.microcode).ok()?,
    })
}

/// A pin from its proto form; the name of the first field over 255 otherwise.
pub fn pin_from_proto(p: &pb::TcbPin) -> Result<TcbPin, &'static str> {
    let byte = |v: Option<u32>, name| v.map(|v| u8::try_from(v).map_err(|_| name)).transpose();
    Ok(TcbPin {
        bootloader: byte(p.bootloader, "bootloader")?,
        tee: byte(p.tee, "tee")?,
        snp: byte(p.snp, "snp")?,
        microcode: byte(p.microcode, "microcode")?,
    })
}

fn pin_to_proto(p: &TcbPin) -> pb::TcbPin {
    pb::TcbPin {
        bootloader: p.bootloader.map(u32::from),
        tee: p.tee.map(u32::from),
        snp: p.snp.map(u32::from),
        microcode: p.microcode.map(u32::from),
    }
}

/// The whole status (reads the store: run off the async threads).
pub fn status(broker: &Broker) -> Result<pb::TrusteeStatusResponse, StoreError> {
    let honoured = broker.honours_node_digests();
    let reported: Vec<NodeTcb> = broker.store().node_tcbs()?;
    let pin = broker.store().tcb_pin()?;
    Ok(pb::TrusteeStatusResponse {
        enabled: broker.trustee().enabled(),
        instances: broker.trustee().instances().iter().map(instance).collect(),
        reported: reported
            .iter()
            .map(|r| pb::NodeTcb {
                node: r.node.clone(),
                tcb: Some(tcb_to_proto(&r.tcb, &r.product)),
                reported_at: r.reported_at,
                honoured,
            })
            .collect(),
        pin: (!pin.is_empty()).then(|| pin_to_proto(&pin)),
    })
}
