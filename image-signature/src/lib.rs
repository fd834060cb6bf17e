//! Container image signatures in cosign's formats.
