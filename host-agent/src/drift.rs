//! Drift: what the QEMU processes Kata started really measure, against what
//! this node registered.
