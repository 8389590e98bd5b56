//! The verdicts of doctor's checks, and how they are printed: text lines, or one JSON document.

use serde::Serialize;

/// How a check came out, from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// As it should be.
    Ok,
    /// Worth knowing; nothing to fix (also: could not be read, and that is no fault).
    Info,
    /// Works, but costs latency or may break later: see the hint.
    Warn,
    /// The transport asked for cannot work here until this is fixed.
    Fail,
}

impl Verdict {
    /// The text tag of the verdict.
    fn tag(self) -> &'static str {
        match self {
            Self::Ok => "[ OK ]",
            Self::Info => "[INFO]",
            Self::Warn => "[WARN]",
            Self::Fail => "[FAIL]",
        }
    }
}

/// One check's outcome. `summary` names what was checked, `detail` says what was found.
#[derive(Debug, Serialize)]
pub struct Check {
    /// Stable, unique: `group.what[.device…]`, for scripts to follow across runs.
    pub id: String,
    /// The id's first part: rdma, roce, access, cpu, irq, memory, clock, shm, platform.
    pub group: String,
    /// The verdict.
    pub verdict: Verdict,
    /// What was checked.
    pub summary: String,
    /// What was found.
    pub detail: String,
    /// What to do about it, when there is something to do.
    pub hint: Option<String>,
}

/// The checks made so far.
#[derive(Default)]
pub struct Report {
    /// In the order they were made.
    pub checks: Vec<Check>,
}

/// How many checks came out each way.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    /// Ok verdicts.
    pub ok: usize,
    /// Info verdicts.
    pub info: usize,
    /// Warn verdicts.
    pub warn: usize,
    /// Fail verdicts.
    pub fail: usize,
}

/// The `--json` document (`version` 1).
#[derive(Serialize)]
struct Doc<'a> {
    version: u32,
    transport: &'a str,
    checks: &'a [Check],
    counts: Counts,
    exit: i32,
}

impl Report {
    /// Records a check; its group is the id's first part, and an id made twice gets `#2`…
    pub fn add(
        &mut self,
        id: &str,
        verdict: Verdict,
        summary: &str,
        detail: &str,
        hint: Option<&str>,
    ) {
        let mut unique = id.to_string();
        let mut n = 1;
        while self.checks.iter().any(|c| c.id == unique) {
            n += 1;
            unique = format!("{id}#{n}");
        }
        self.checks.push(Check {
            group: id.split('.').next().unwrap_or(id).to_string(),
            id: unique,
            verdict,
            summary: summary.to_string(),
            detail: detail.to_string(),
            hint: hint.map(str::to_string),
        });
    }

    /// The counts per verdict.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for k in &self.checks {
            *match k.verdict {
                Verdict::Ok => &mut c.ok,
                Verdict::Info => &mut c.info,
                Verdict::Warn => &mut c.warn,
                Verdict::Fail => &mut c.fail,
            } += 1;
        }
        c
    }

    /// The worst verdict (`Ok` for no checks).
    pub fn worst(&self) -> Verdict {
        self.checks
            .iter()
            .map(|c| c.verdict)
            .max()
            .unwrap_or(Verdict::Ok)
    }

    /// The report as text lines, `[ OK ] summary: detail` and hints, then the counts.
    pub fn text(&self, transport: &str) -> String {
        let mut s = format!("rdmabus doctor (transport {transport})\n");
        let mut group = "";
        for c in &self.checks {
            if c.group != group {
                group = &c.group;
                s.push_str(&format!("-- {group}\n"));
            }
            s.push_str(&format!(
                "{} {}: {}\n",
                c.verdict.tag(),
                c.summary,
                c.detail
            ));
            if let Some(h) = &c.hint {
                s.push_str(&format!("       hint: {h}\n"));
            }
        }
        let n = self.counts();
        s.push_str(&format!(
            "\n{} ok, {} info, {} warnings, {} failures\n",
            n.ok, n.info, n.warn, n.fail
        ));
        s
    }

    /// The report as the `--json` document, exiting with `exit`.
    pub fn json(&self, transport: &str, exit: i32) -> String {
        let doc = Doc {
            version: 1,
            transport,
            checks: &self.checks,
            counts: self.counts(),
            exit,
        };
        serde_json::to_string_pretty(&doc)
            .unwrap_or_else(|e| format!("{{\"version\":1,\"error\":{:?}}}", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stay_unique_and_name_their_group() {
        let mut r = Report::default();
        r.add("cpu.governor", Verdict::Ok, "a", "b", None);
        r.add("cpu.governor", Verdict::Fail, "a", "b", Some("h"));
        assert_eq!(r.checks[1].id, "cpu.governor#2");
        assert_eq!(r.checks[1].group, "cpu");
        assert_eq!(r.worst(), Verdict::Fail);
        let v: serde_json::Value = serde_json::from_str(&r.json("auto", 1)).unwrap();
        assert_eq!(v["counts"]["fail"], 1);
        assert_eq!(v["checks"][1]["verdict"], "fail");
        assert_eq!(v["checks"][0]["hint"], serde_json::Value::Null);
    }
}
