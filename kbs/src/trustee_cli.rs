//! `kbs admin trustee ...`: what the broker writes to Trustee and what each
//! Trustee holds, and the operator's TCB minimums.

use crate::admin_cli::{print_json, rpc_error};
use clap::Subcommand;
use kbs_proto::admin_client::Client;
use kbs_proto::kbsadmin::{SetTcbPinRequest, TcbPin, TrusteeStatusRequest};

/// `kbs admin trustee ...`
#[derive(Debug, Subcommand)]
pub enum TrusteeCommand {
    /// For each Trustee: reachable, last write, what it holds for each name,
    /// how that differs from what it should hold, and whether its resource
    /// policy requires an affirming verdict; then the TCBs nodes reported and
    /// the pins.
    Status,
    /// TCB minimums (operator only).
    #[command(subcommand)]
    Tcb(TcbCommand),
}

/// `kbs admin trustee tcb ...`
#[derive(Debug, Subcommand)]
pub enum TcbCommand {
    /// Pin minimum TCB values: Trustee then accepts these values and any
    /// higher, whatever the nodes report (a field not given still follows
    /// the nodes' reports under open registration, and is empty otherwise).
    Set {
        /// Minimum boot loader SVN (snp_bootloader).
        #[arg(long, value_name = "N")]
        bootloader: Option<u8>,
        /// Minimum PSP OS SVN (snp_tee_svn).
        #[arg(long, value_name = "N")]
        tee: Option<u8>,
        /// Minimum SNP firmware SVN (snp_snp_svn).
        #[arg(long, value_name = "N")]
        snp: Option<u8>,
        /// Minimum microcode level (snp_microcode).
        #[arg(long, value_name = "N")]
        microcode: Option<u8>,
    },
    /// Remove the pins.
    Clear,
}

fn when(unix: i64) -> String {
    if unix <= 0 {
        return "never".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.unsigned_abs());
    humantime::format_rfc3339_seconds(t).to_string()
}

fn shorten(list_json: &str) -> String {
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(list_json)
    else {
        return list_json.to_string();
    };
    let shown: Vec<String> = items
        .iter()
        .map(|v| match v {
            serde_json::Value::String(s) if s.len() > 16 => {
                format!("{}…", s.chars().take(12).collect::<String>())
            }
            other => other.to_string().trim_matches('"').to_string(),
        })
        .collect();
    if shown.len() > 8 {
        let first: Vec<String> = shown.iter().take(4).cloned().collect();
        format!("[{} … {} values]", first.join(", "), shown.len())
    } else {
        format!("[{}]", shown.join(", "))
    }
}

/// Runs a `kbs admin trustee` command.
pub async fn run(client: &mut Client, cmd: TrusteeCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        TrusteeCommand::Status => {
            let r = client
                .trustee_status(TrusteeStatusRequest {})
                .await
                .map_err(|s| rpc_error("TrusteeStatus", &s))?
                .into_inner();
            if json {
                return print_json(&status_json(&r));
            }
            if !r.enabled {
                println!("the broker writes to no Trustee (start it with --trustee-url or --trustee-rvps)");
            }
            for i in &r.instances {
                println!("{}", i.target);
                let state = if !i.last_error.is_empty() {
                    format!("failing: {}", i.last_error)
                } else if i.reachable {
                    "reachable".into()
                } else {
                    "not reached yet".into()
                };
                println!("  state       {state}");
                println!(
                    "  last write  {} ({} since start)",
                    when(i.last_write_at),
                    i.writes
                );
                println!("  last check  {}", when(i.last_check_at));
                println!("  policy      {}", i.policy);
                for n in &i.names {
                    let missing = !n.missing.is_empty() && n.missing != "[]";
                    let extra = !n.extra.is_empty() && n.extra != "[]";
                    let line = if n.held.is_empty() {
                        format!("absent; wants {}", shorten(&n.want))
                    } else if !missing && !extra {
                        format!("holds {}, as it should", shorten(&n.held))
                    } else {
                        let mut l = format!("holds {}", shorten(&n.held));
                        if missing {
                            l.push_str(&format!("; missing {}", shorten(&n.missing)));
                        }
                        if extra {
                            l.push_str(&format!("; not ours {}", shorten(&n.extra)));
                        }
                        l
                    };
                    println!("  {:<24} {line}", n.name);
                }
            }
            for t in &r.reported {
                let tcb = t.tcb.clone().unwrap_or_default();
                println!(
                    "node {} reported {} TCB: boot loader {}, TEE {}, SNP {}, microcode {} at {}{}",
                    t.node,
                    tcb.product,
                    tcb.bootloader,
                    tcb.tee,
                    tcb.snp,
                    tcb.microcode,
                    when(t.reported_at),
                    if t.honoured {
                        ""
                    } else {
                        " (not honoured under approved registration: pin minimums)"
                    }
                );
            }
            match &r.pin {
                Some(p) => println!(
                    "pinned minimums: boot loader {}, TEE {}, SNP {}, microcode {}",
                    opt(p.bootloader),
                    opt(p.tee),
                    opt(p.snp),
                    opt(p.microcode)
                ),
                None => println!("no TCB minimums pinned"),
            }
            Ok(())
        }
        TrusteeCommand::Tcb(TcbCommand::Set {
            bootloader,
            tee,
            snp,
            microcode,
        }) => {
            if bootloader.is_none() && tee.is_none() && snp.is_none() && microcode.is_none() {
                anyhow::bail!("give at least one of --bootloader, --tee, --snp, --microcode");
            }
            client
                .set_tcb_pin(SetTcbPinRequest {
                    pin: Some(TcbPin {
                        bootloader: bootloader.map(u32::from),
                        tee: tee.map(u32::from),
                        snp: snp.map(u32::from),
                        microcode: microcode.map(u32::from),
                    }),
                    clear: false,
                })
                .await
                .map_err(|s| rpc_error("SetTcbPin", &s))?;
            println!("TCB minimums pinned");
            Ok(())
        }
        TrusteeCommand::Tcb(TcbCommand::Clear) => {
            client
                .set_tcb_pin(SetTcbPinRequest {
                    pin: None,
                    clear: true,
                })
                .await
                .map_err(|s| rpc_error("SetTcbPin", &s))?;
            println!("TCB minimums removed");
            Ok(())
        }
    }
}

fn opt(v: Option<u32>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn parse_list(text: &str) -> serde_json::Value {
    if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(text).unwrap_or(serde_json::Value::String(text.to_string()))
    }
}

fn status_json(r: &kbs_proto::kbsadmin::TrusteeStatusResponse) -> serde_json::Value {
    serde_json::json!({
        "enabled": r.enabled,
        "instances": r.instances.iter().map(|i| serde_json::json!({
            "target": i.target,
            "reachable": i.reachable,
            "last_error": (!i.last_error.is_empty()).then_some(&i.last_error),
            "last_write_at": (i.last_write_at > 0).then_some(i.last_write_at),
            "last_check_at": (i.last_check_at > 0).then_some(i.last_check_at),
            "writes": i.writes,
            "policy": i.policy,
            "names": i.names.iter().map(|n| serde_json::json!({
                "name": n.name,
                "want": parse_list(&n.want),
                "held": parse_list(&n.held),
                "missing": parse_list(&n.missing),
                "extra": parse_list(&n.extra),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "reported": r.reported.iter().map(|t| {
            let tcb = t.tcb.clone().unwrap_or_default();
            serde_json::json!({
                "node": t.node,
                "product": tcb.product,
                "bootloader": tcb.bootloader,
                "tee": tcb.tee,
                "snp": tcb.snp,
                "microcode": tcb.microcode,
                "reported_at": t.reported_at,
                "honoured": t.honoured,
            })
        }).collect::<Vec<_>>(),
        "pin": r.pin.as_ref().map(|p| serde_json::json!({
            "bootloader": p.bootloader, "tee": p.tee, "snp": p.snp, "microcode": p.microcode,
        })),
    })
}
