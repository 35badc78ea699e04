//! The pre-deploy check: which checkpoints in a node's database a new
//! build's registry resumes as they are, and which it would refuse.
//!
//! It answers, before a deployment, the question a node otherwise answers
//! after it by sending flows to the hospital: for every flow `NAME`,
//! `VERSION` and fingerprint with checkpoints in the database, does the new
//! build register code with that fingerprint, or a migration from it? A
//! migration is run on every checkpoint it reads (it is a pure function of
//! the state), so a state it would refuse is counted as refused, with its
//! reason. It reads the `checkpoints` table only, runs no flow step and
//! writes nothing, so it can run in CI against a copy of a production
//! database (the runner's `--check-upgrade` does exactly that).

use super::NodeError;
use super::core::store_err;
use super::records::CheckpointRecord;
use crate::registry::Registry;
use crate::store::{Store, Table};
use std::collections::BTreeMap;
use std::fmt;

/// Checkpoints read per store call: bounds the check's memory on a large
/// database.
const PAGE: usize = 1024;

/// What the check found for one version of one flow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpgradeGroup {
    /// `Flow::NAME` (for an unreadable record, a description).
    pub flow: String,
    /// `Flow::VERSION` of the code that wrote the checkpoints.
    pub version: u32,
    /// `Flow::fingerprint()` of that code.
    pub fingerprint: u64,
    /// Checkpoints the new build resumes as they are.
    pub resume: u64,
    /// Checkpoints a registered migration moves to new code.
    pub migrate: u64,
    /// Checkpoints the new build would refuse (hold in the hospital).
    pub refused: u64,
    /// Why they would be refused, when some are.
    pub reason: Option<String>,
}

/// The outcome of [`check_upgrade`]: one group per flow version with
/// checkpoints in the database, ordered by name, version and fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UpgradeReport {
    /// The groups.
    pub groups: Vec<UpgradeGroup>,
}

impl UpgradeReport {
    /// Checkpoints the new build would refuse, over all groups.
    pub fn refused(&self) -> u64 {
        self.groups.iter().map(|g| g.refused).sum()
    }

    /// Checkpoints the new build resumes as they are, over all groups.
    pub fn resumed(&self) -> u64 {
        self.groups.iter().map(|g| g.resume).sum()
    }

    /// Checkpoints a migration moves to new code, over all groups.
    pub fn migrated(&self) -> u64 {
        self.groups.iter().map(|g| g.migrate).sum()
    }

    /// Whether deploying the build refuses no checkpoint.
    pub fn is_safe(&self) -> bool {
        self.refused() == 0
    }
}

/// One line per group, then a total:
///
/// ```text
/// flow upgrade.sell version 1 fingerprint 0ef4b1e39d45ba08: resume 0, migrate 4, refused 2 (the migration of ...)
/// total: resume 0, migrate 4, refused 2
/// ```
impl fmt::Display for UpgradeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for g in &self.groups {
            write!(
                f,
                "flow {} version {} fingerprint {:016x}: resume {}, migrate {}, refused {}",
                g.flow, g.version, g.fingerprint, g.resume, g.migrate, g.refused
            )?;
            match &g.reason {
                Some(reason) => writeln!(f, " ({reason})")?,
                None => writeln!(f)?,
            }
        }
        writeln!(
            f,
            "total: resume {}, migrate {}, refused {}",
            self.resumed(),
            self.migrated(),
            self.refused()
        )
    }
}

/// What the new build would do with one checkpoint.
enum Outcome {
    Resume,
    Migrate,
    Refused(String),
}

/// Reads every checkpoint in `store` and reports, per flow version, how
/// many `registry` resumes as they are, how many its migrations move to new
/// code and how many it would refuse. Writes nothing to `store`.
pub fn check_upgrade(store: &dyn Store, registry: &Registry) -> Result<UpgradeReport, NodeError> {
    let mut groups: BTreeMap<(String, u32, u64), UpgradeGroup> = BTreeMap::new();
    let mut from: Vec<u8> = Vec::new();
    loop {
        let page = store
            .range(&Table::CHECKPOINTS, &from, None, PAGE)
            .map_err(store_err)?;
        let Some((last, _)) = page.last() else {
            break;
        };
        // The next page starts just after this one's last key.
        let mut next = last.clone();
        next.push(0);
        let full = page.len() == PAGE;
        for (_, bytes) in page {
            let (key, outcome) = match CheckpointRecord::decode(&bytes) {
                Ok(rec) => {
                    let outcome =
                        match registry.migrate(&rec.flow, rec.version, rec.fingerprint, &rec.state)
                        {
                            Some(Ok(_)) => Outcome::Migrate,
                            Some(Err(why)) => Outcome::Refused(why),
                            None => {
                                match registry.resuming(&rec.flow, rec.fingerprint, rec.version) {
                                    Some(_) => Outcome::Resume,
                                    None => Outcome::Refused(registry.why_not_resumable(
                                        &rec.flow,
                                        rec.fingerprint,
                                        rec.version,
                                    )),
                                }
                            }
                        };
                    ((rec.flow, rec.version, rec.fingerprint), outcome)
                }
                Err(e) => (
                    ("<undecodable checkpoint>".to_owned(), 0, 0),
                    Outcome::Refused(format!("the record does not decode: {e}")),
                ),
            };
            let group = groups.entry(key.clone()).or_insert_with(|| UpgradeGroup {
                flow: key.0,
                version: key.1,
                fingerprint: key.2,
                resume: 0,
                migrate: 0,
                refused: 0,
                reason: None,
            });
            match outcome {
                Outcome::Resume => group.resume += 1,
                Outcome::Migrate => group.migrate += 1,
                Outcome::Refused(reason) => {
                    group.refused += 1;
                    group.reason.get_or_insert(reason);
                }
            }
        }
        if !full {
            break;
        }
        from = next;
    }
    Ok(UpgradeReport {
        groups: groups.into_values().collect(),
    })
}
