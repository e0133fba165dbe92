//! [`apply`], [`remove`] and [`status`]: the capture rules of a [`RuleSet`] on a [`Host`], each
//! one observe, then plan, then execute.
//!
//! Each first checks its tools and the namespace and reads what is installed
//! ([`crate::observe()`]); only then does [`apply`] run the [`crate::plan()`] from there to the
//! desired rules ([`crate::execute()`]). Running it twice changes nothing the second time.

use crate::error::RedirectError;
use crate::execute::{ApplyReport, execute};
use crate::host::Host;
use crate::observe::{observe, observe_firewall};
use crate::plan::{other, plan, plan_removal};
use crate::rules::RuleSet;
use crate::status::{Status, compare};

/// Reads what is installed on `host` and compares it with `rules`. Changes nothing.
pub fn status(host: &Host, rules: &RuleSet) -> Result<Status, RedirectError> {
    Ok(compare(&observe(host, rules)?, rules))
}

/// Installs `rules` on `host`, changing only the parts that differ (see [`crate::plan()`]).
///
/// Turns `ip_forward` on when it is off; fails with a clear error if `/proc/sys` is read-only.
pub fn apply(host: &Host, rules: &RuleSet) -> Result<ApplyReport, RedirectError> {
    let seen = observe(host, rules)?;
    execute(host, &plan(&seen, rules))
}

/// Deletes every chain, set, ip rule and route of ours on `host`: those of `rules.backend`, and
/// those of the other backend when its tools are installed. What is not there is skipped;
/// `ip_forward` is left as it is.
pub fn remove(host: &Host, rules: &RuleSet) -> Result<ApplyReport, RedirectError> {
    let seen = observe(host, rules)?;
    // What the other backend left (the backend was switched): removed too when its tools exist.
    let other = other(rules.backend);
    let leftover = if other.tools().iter().all(|t| t.locate().is_ok()) {
        Some(observe_firewall(host, other)?)
    } else {
        None
    };
    execute(host, &plan_removal(&seen, leftover.as_ref(), rules))
}
