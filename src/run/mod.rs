//! Running a plan: the [`executor`] emits [`crate::exec::events`]; the [`log`] and the
//! [`report`] consume them; [`preview`] is the side-effect-free dry run. Both bind a step to
//! what it runs with through [`bind`].

pub mod apply;
pub mod bind;
pub mod executor;
pub mod history;
pub mod junit;
pub mod locks;
pub mod log;
pub mod markdown;
pub mod metrics;
pub mod preview;
pub mod report;
pub mod resume;
pub mod retry;
pub mod saved;
pub mod saved_state;
