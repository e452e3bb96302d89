//! Helm's own engine for the chart tests: `charts/helm.py` over the `helm-python-sdk` package
//! (Helm's Go SDK behind a C ABI). Where the package is not installed the chart tests skip,
//! saying so, unless `FT_REQUIRE_HELM=1` (as `.ci/run` sets) makes that a failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::workspace_root;

/// The chart, in this repository.
pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts").join("ft-operator")
}

/// A Python interpreter that can import `helm_python`.
pub struct Helm {
    python: String,
}

/// One rendered template: its path in the chart and the objects it holds.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub template: String,
    pub objects: Vec<Value>,
}

impl Helm {
    /// `FT_HELM_PYTHON` (default `python3`) if it has Helm's engine; `None` to skip, or an
    /// error when `FT_REQUIRE_HELM=1`.
    pub fn find() -> anyhow::Result<Option<Helm>> {
        let python = std::env::var("FT_HELM_PYTHON").unwrap_or_else(|_| "python3".into());
        let usable = Command::new(&python)
            .args(["-c", "import helm_python"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if usable {
            return Ok(Some(Helm { python }));
        }
        let why = format!(
            "{python} cannot import helm_python: `pip install helm-python-sdk`, or set FT_HELM_PYTHON"
        );
        if std::env::var("FT_REQUIRE_HELM").is_ok_and(|v| v == "1") {
            bail!("FT_REQUIRE_HELM=1 but {why}");
        }
        eprintln!("chart test skipped: {why}");
        Ok(None)
    }

    fn call(&self, args: &[&str], values: &Value) -> anyhow::Result<Value> {
        let script = workspace_root().join("charts").join("helm.py");
        let mut child = Command::new(&self.python)
            .arg(&script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", script.display()))?;
        child
            .stdin
            .take()
            .context("helm.py's input")?
            .write_all(values.to_string().as_bytes())?;
        let output = child.wait_with_output()?;
        let answer: Value = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "helm.py {args:?} answered no JSON: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
        if let Some(error) = answer.get("error").and_then(Value::as_str) {
            bail!("{error}");
        }
        Ok(answer)
    }

    /// `helm lint --strict` of the chart with these values: its findings.
    pub fn lint(&self, values: &Value) -> anyhow::Result<Value> {
        self.call(&["lint", &chart_dir().to_string_lossy()], values)
    }

    /// The chart rendered as `helm template` would, after checking the values against its
    /// schema; offline, so `lookup` finds nothing.
    pub fn render(
        &self,
        values: &Value,
        release: &str,
        namespace: &str,
    ) -> anyhow::Result<Vec<Rendered>> {
        let answer = self.call(
            &["render", &chart_dir().to_string_lossy(), release, namespace],
            values,
        )?;
        let mut rendered = Vec::new();
        for entry in answer.as_array().into_iter().flatten() {
            let template = entry["template"].as_str().unwrap_or_default().to_string();
            if !template.ends_with(".yaml") {
                continue;
            }
            let manifest = entry["manifest"].as_str().unwrap_or_default();
            let documents: Vec<Value> = serde_saphyr::from_multiple(manifest)
                .with_context(|| format!("{template} is not YAML"))?;
            rendered.push(Rendered {
                template,
                objects: documents.into_iter().filter(|d| !d.is_null()).collect(),
            });
        }
        Ok(rendered)
    }

    /// Every object of a render.
    pub fn objects(
        &self,
        values: &Value,
        release: &str,
        namespace: &str,
    ) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .render(values, release, namespace)?
            .into_iter()
            .flat_map(|r| r.objects)
            .collect())
    }

    /// `helm install` into the cluster of `KUBECONFIG`.
    pub fn install(&self, release: &str, namespace: &str, values: &Value) -> anyhow::Result<()> {
        self.release_action("install", release, namespace, values)
    }

    /// `helm upgrade` of a release.
    pub fn upgrade(&self, release: &str, namespace: &str, values: &Value) -> anyhow::Result<()> {
        self.release_action("upgrade", release, namespace, values)
    }

    fn release_action(
        &self,
        action: &str,
        release: &str,
        namespace: &str,
        values: &Value,
    ) -> anyhow::Result<()> {
        let chart = chart_dir();
        self.call(
            &[action, &chart.to_string_lossy(), release, namespace],
            values,
        )
        .map(|_| ())
    }

    /// `helm uninstall` of a release.
    pub fn uninstall(&self, release: &str, namespace: &str) -> anyhow::Result<()> {
        self.call(&["uninstall", release, namespace], &Value::Null)
            .map(|_| ())
    }
}

/// The object of `kind` named `name` in a render.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}
