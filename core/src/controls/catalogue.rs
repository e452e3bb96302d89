//! The control catalogue, embedded from `policies/controls.yaml` and checked when loaded: an
//! auditor's history refers to control ids, and every control must cite a rule in scope.

use std::collections::BTreeSet;

use serde::Deserialize;

const EMBEDDED: &str = include_str!("../../../policies/controls.yaml");

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Catalogue {
    /// Every hosting rule in the operator's scope.
    pub rules: Vec<Rule>,
    pub controls: Vec<Control>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// `CLD-xx`, or a general rule such as `2.4.c`.
    pub id: String,
    pub summary: String,
    /// Whether a cluster can check it; if not, `evidence` says how the operator supports it.
    pub checkable: bool,
    #[serde(default)]
    pub evidence: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Control {
    pub id: String,
    pub rules: Vec<String>,
    pub title: String,
    pub severity: Severity,
    /// What the operator does so that the control holds.
    pub enforced: String,
    /// What the evaluator looks at to judge it.
    pub checked: String,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::High => "high",
            Self::Medium => "medium",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("control catalogue is not valid YAML: {0}")]
    Yaml(#[from] serde_saphyr::Error),
    #[error("control catalogue: {0}")]
    Invalid(String),
}

impl Catalogue {
    /// The catalogue compiled into this binary.
    pub fn embedded() -> Result<Self, CatalogueError> {
        Self::parse(EMBEDDED)
    }

    /// Parses and checks a catalogue: ids unique, every cited rule in scope, every checkable
    /// rule cited by a control, every other rule explaining its evidence.
    pub fn parse(yaml: &str) -> Result<Self, CatalogueError> {
        let catalogue: Catalogue = serde_saphyr::from_str(yaml)?;
        let mut problems = Vec::new();

        let mut rule_ids = BTreeSet::new();
        for rule in &catalogue.rules {
            if !rule_ids.insert(rule.id.as_str()) {
                problems.push(format!("rule {} is listed twice", rule.id));
            }
            if !rule.checkable && rule.evidence.as_deref().is_none_or(str::is_empty) {
                problems.push(format!(
                    "rule {} is not checkable but gives no evidence",
                    rule.id
                ));
            }
        }
        let mut control_ids = BTreeSet::new();
        let mut cited = BTreeSet::new();
        for control in &catalogue.controls {
            if !control_ids.insert(control.id.as_str()) {
                problems.push(format!("control {} is listed twice", control.id));
            }
            if control.rules.is_empty() {
                problems.push(format!("control {} cites no rule", control.id));
            }
            for rule in &control.rules {
                if !rule_ids.contains(rule.as_str()) {
                    problems.push(format!(
                        "control {} cites {rule}, which is not a rule in scope",
                        control.id
                    ));
                }
                cited.insert(rule.as_str());
            }
        }
        for rule in catalogue.rules.iter().filter(|r| r.checkable) {
            if !cited.contains(rule.id.as_str()) {
                problems.push(format!(
                    "rule {} is checkable but no control cites it",
                    rule.id
                ));
            }
        }

        if problems.is_empty() {
            Ok(catalogue)
        } else {
            Err(CatalogueError::Invalid(problems.join("; ")))
        }
    }

    pub fn control(&self, id: &str) -> Option<&Control> {
        self.controls.iter().find(|c| c.id == id)
    }

    /// The catalogue as Markdown tables, for the README and for auditors
    /// (`ft-operator controls`): the controls, then the rules no cluster can check.
    pub fn markdown(&self) -> String {
        let cell = |s: &str| {
            s.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace('|', "\\|")
        };
        let mut out = String::from(
            "| control | rules | severity | title | enforced | checked |\n|---|---|---|---|---|---|\n",
        );
        for c in &self.controls {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                c.id,
                c.rules.join(", "),
                c.severity.as_str(),
                cell(&c.title),
                cell(&c.enforced),
                cell(&c.checked)
            ));
        }
        out.push_str(
            "\n| rule not checkable by a cluster | how the operator supports it |\n|---|---|\n",
        );
        for r in self.rules.iter().filter(|r| !r.checkable) {
            out.push_str(&format!(
                "| {} ({}) | {} |\n",
                r.id,
                cell(&r.summary),
                cell(r.evidence.as_deref().unwrap_or_default())
            ));
        }
        out
    }
}
