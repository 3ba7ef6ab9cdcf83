//! The MessageBroker API: CRD types, status and conditions.

pub mod conditions;
pub mod spec;
pub mod status;

pub use spec::*;
pub use status::*;
