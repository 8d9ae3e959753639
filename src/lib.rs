//! The ssq library: what the `ssq` CLI and the `ssqd` daemon share — file formats
//! (startup params, access list, inventory, keys, pins), request signing, the portal API
//! types and the portal client.

pub mod access;
pub mod accessrecord;
pub mod api;
pub mod client;
pub mod decimal;
pub mod extlog;
pub mod inventory;
pub mod keys;
pub mod netcheck;
pub mod nodeconf;
pub mod pins;
pub mod policy;
pub mod policystore;
pub mod query;
pub mod reportapi;
pub mod reportstore;
pub mod sign;
pub mod spool;
pub mod startup;
pub mod syncapi;
pub mod tls;
pub mod yamlpos;
