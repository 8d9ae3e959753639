//! The policy this node enforces right now: the revision it came from, its compiled
//! matcher, and the merge of a slave's local sections (`sync.never`). Swapped whole
//! behind a lock, so a request sees either the old policy or the new one, never a mix.

use std::sync::{Arc, RwLock};

use ssq::policy::{self, Matcher, Policy, PolicyError};
use ssq::syncapi::PolicyDoc;

/// One applied policy.
pub struct ActivePolicy {
    /// The revision as the master (or this node's own store) published it.
    pub doc: PolicyDoc,
    /// The sha256 of what is enforced (differs from doc's with local sections).
    pub effective_sha256: String,
    /// The compiled matcher for this node.
    pub matcher: Arc<Matcher>,
}

/// The slot holding the active policy (None: never synced).
#[derive(Default)]
pub struct Slot(RwLock<Option<Arc<ActivePolicy>>>);

impl Slot {
    /// The active policy, if any.
    pub fn get(&self) -> Option<Arc<ActivePolicy>> {
        self.0.read().ok().and_then(|g| g.clone())
    }

    /// Replace the active policy; then hand back to the system what parsing and
    /// compiling it left free.
    pub fn set(&self, p: ActivePolicy) {
        if let Ok(mut g) = self.0.write() {
            *g = Some(Arc::new(p));
        }
        crate::memory::release_free_memory_soon();
    }
}

/// Replace the sections named in `never` of `master` with those of `local` (absent in
/// `local`: absent). The other sections stay the master's.
pub fn merge(master: &Policy, local: Option<&Policy>, never: &[String]) -> Policy {
    let mut out = master.clone();
    let empty = Policy::default();
    let local = local.unwrap_or(&empty);
    for name in never {
        match name.as_str() {
            "access" => out.access = local.access.clone(),
            "categories" => out.categories = local.categories.clone(),
            "rules" => out.rules = local.rules.clone(),
            "connect" => out.connect = local.connect.clone(),
            "limits" => out.limits = local.limits.clone(),
            _ => {}
        }
    }
    out
}

/// Sections of `p` present outside `allowed` (for a local apply on a slave).
pub fn sections_outside(p: &Policy, allowed: &[String]) -> Vec<String> {
    policy::section_hashes(p)
        .into_keys()
        .filter(|s| !allowed.contains(s))
        .collect()
}

/// Parse, check, merge and compile a revision for `node`. A large policy takes a
/// while: on the multi-threaded control runtime, the thread hands its other tasks (the
/// accept loop, the portal) to another thread meanwhile.
///
/// # Errors
/// The reason, for a NACK or an API error: sha mismatch, parse or validation errors.
pub fn build(
    doc: &PolicyDoc,
    local_text: Option<&str>,
    never: &[String],
    node: &str,
) -> Result<ActivePolicy, String> {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(|| compile(doc, local_text, never, node))
    } else {
        compile(doc, local_text, never, node)
    }
}

fn compile(
    doc: &PolicyDoc,
    local_text: Option<&str>,
    never: &[String],
    node: &str,
) -> Result<ActivePolicy, String> {
    let master = policy::parse(&doc.text).map_err(|e| format!("policy does not parse: {e}"))?;
    let sha = policy::canonical_sha256(&master);
    if sha != doc.info.sha256 {
        return Err(format!(
            "sha256 mismatch: revision {} says {}, its content hashes to {sha}",
            doc.info.revision, doc.info.sha256
        ));
    }
    let local = match local_text {
        Some(t) => Some(policy::parse(t).map_err(|e| format!("local sections do not parse: {e}"))?),
        None => None,
    };
    let effective = if never.is_empty() {
        master
    } else {
        merge(&master, local.as_ref(), never)
    };
    let validated = policy::validate(&effective, &[]).map_err(|e| e.to_string())?;
    let matcher = Matcher::compile(&validated, node).map_err(|e: PolicyError| e.to_string())?;
    Ok(ActivePolicy {
        doc: doc.clone(),
        effective_sha256: policy::canonical_sha256(&effective),
        matcher: Arc::new(matcher),
    })
}
