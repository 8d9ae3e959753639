//! The ssq library: what the `ssq` CLI and the `ssqd` daemon share — file formats
//! (startup params, access list, inventory, keys), request signing, the portal API types
//! and the portal client.

pub mod access;
pub mod inventory;
pub mod startup;
pub mod yamlpos;
