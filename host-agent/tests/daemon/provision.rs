//! `host-agent provision` against a real kbs process.
