//! The operator, as a table of contents. A reconcile is [`reconcile`]: it [`observe`]s, [`decide`]s (with
//! [`membership`], [`plan`] and [`settle`]), [`act`]s, and records in [`status`]. Around it: the shared
//! [`context`] with its per-binding [`memory`], the [`watch`] streams that feed it, and [`run`], the wiring.

pub mod act;
pub mod backoff;
pub mod config;
pub mod context;
pub mod decide;
pub mod error;
pub mod events;
#[cfg(test)]
pub mod fixtures;
pub mod http;
pub mod index;
pub mod labels;
pub mod leader;
pub mod listeners;
pub mod membership;
pub mod memory;
pub mod observe;
pub mod plan;
pub mod pods;
mod polls;
pub mod reconcile;
pub mod run;
pub mod settle;
pub mod slim;
pub mod status;
pub mod watch;

pub use config::Config;
pub use context::Context;
pub use polls::PollSchedule;
pub use run::run;
