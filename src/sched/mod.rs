//! Which task runs next and on which agent: the run queue and routing. Pure: no
//! I/O and no clock; callers pass `now` and each agent's availability.

pub mod queue;
pub mod routing;
