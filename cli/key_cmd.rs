//! `ssq key new`: the cluster's activation key, or an operator key pair.

use std::path::PathBuf;

use serde_json::json;
use ssq::keys::{pub_path, ActivationKey, SigningKey};

use crate::args::KeyCmd;
use crate::output::{emit, Failure};
use crate::target::Ctx;

/// Run `ssq key ...`.
///
/// # Errors
/// Exit 2 when the file exists (never overwritten) or cannot be written.
pub fn run(ctx: &Ctx, cmd: KeyCmd) -> Result<(), Failure> {
    let KeyCmd::New { out, operator } = cmd;
    let key_err = |e: ssq::keys::KeyError| Failure::new(2, "key_file", e.to_string());
    if operator {
        let path = out.unwrap_or_else(|| ctx.home.join("operator.key"));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let comment = format!(
            "{}@{}",
            std::env::var("USER").unwrap_or_else(|_| "operator".into()),
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        );
        let key = SigningKey::create(&path, Some(&comment)).map_err(key_err)?;
        let public = pub_path(&path);
        let fp = key.public().fingerprint();
        emit(
            ctx.g.output,
            &json!({"private": path, "public": public, "fingerprint": fp}),
            || {
                format!(
                    "operator key {fp}\n  private: {} (0600, keep it secret)\n  public:  {}\nadd the public line to each node: ssq --local --config /etc/ssq/startup.yaml operator add {}",
                    path.display(),
                    public.display(),
                    public.display()
                )
            },
        )
    } else {
        let path = out.unwrap_or_else(|| PathBuf::from("activation.key"));
        let key = ActivationKey::create(&path).map_err(key_err)?;
        emit(
            ctx.g.output,
            &json!({"path": path, "key_id": key.key_id()}),
            || {
                format!(
                    "activation key {} written to {} (0600)\ncopy this same file to every node of the cluster (activation_key_file in startup.yaml)",
                    key.key_id(),
                    path.display()
                )
            },
        )
    }
}
