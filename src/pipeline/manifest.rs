//! Stage manifests: what a stage was run with (config hash, input fingerprints), what it
//! wrote (output files with sha256 and size), and its summary. A stage is done when its
//! manifest matches, nothing else; the manifest is written last.
use crate::error::{read_json, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutputFile {
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub stage: String,
    pub distill_version: String,
    pub config_hash: String,
    pub config: serde_json::Value,
    pub inputs: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, OutputFile>,
    pub rows: u64,
    pub started_unix: u64,
    pub finished_unix: u64,
    pub seconds: f64,
    pub summary: serde_json::Value,
}

/// Why a stage must run again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staleness {
    Missing,
    ConfigChanged,
    InputChanged(String),
    /// An output is gone or has another size.
    OutputChanged(String),
    /// An output has its recorded size but not its recorded content (sha256).
    OutputModified(String),
}

impl std::fmt::Display for Staleness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Staleness::Missing => write!(f, "no manifest"),
            Staleness::ConfigChanged => write!(f, "its configuration changed"),
            Staleness::InputChanged(k) => write!(f, "input `{k}` changed"),
            Staleness::OutputChanged(k) => write!(f, "output `{k}` is missing or was modified"),
            Staleness::OutputModified(k) => {
                write!(
                    f,
                    "output `{k}` was modified (its sha256 differs from the manifest's)"
                )
            }
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Manifest {
    pub fn read(stage_dir: &Path) -> Result<Option<Self>> {
        let path = stage_dir.join(MANIFEST);
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    /// Write `manifest.json` atomically (the stage's last write).
    pub fn write(&self, stage_dir: &Path) -> Result<()> {
        let path = stage_dir.join(MANIFEST);
        crate::data::atomic::write_json(&path, self)
    }

    /// Does this manifest describe a complete run of the stage with `config_hash` and
    /// `inputs`, whose outputs are still in place: the same sizes, then the same content
    /// (sha256, read afresh)?
    pub fn check(
        &self,
        stage_dir: &Path,
        config_hash: &str,
        inputs: &BTreeMap<String, String>,
    ) -> std::result::Result<(), Staleness> {
        if self.config_hash != config_hash {
            return Err(Staleness::ConfigChanged);
        }
        for (k, v) in inputs {
            if self.inputs.get(k) != Some(v) {
                return Err(Staleness::InputChanged(k.clone()));
            }
        }
        if let Some(k) = self.inputs.keys().find(|k| !inputs.contains_key(*k)) {
            return Err(Staleness::InputChanged(k.clone()));
        }
        for (name, out) in &self.outputs {
            let ok = std::fs::metadata(stage_dir.join(name)).is_ok_and(|m| m.len() == out.bytes);
            if !ok {
                return Err(Staleness::OutputChanged(name.clone()));
            }
        }
        // Hashed side by side; the first modified output in name order is reported.
        use rayon::prelude::*;
        let outputs: Vec<(&String, &OutputFile)> = self.outputs.iter().collect();
        let same: Vec<bool> = outputs
            .par_iter()
            .map(|(name, out)| {
                super::fingerprint::content(&stage_dir.join(name)).is_ok_and(|h| h == out.sha256)
            })
            .collect();
        match outputs.iter().zip(same).find(|(_, same)| !same) {
            Some(((name, _), _)) => Err(Staleness::OutputModified((*name).clone())),
            None => Ok(()),
        }
    }

    /// Fingerprint of one output, for downstream stages.
    pub fn output_fingerprint(&self, name: &str) -> Option<&str> {
        self.outputs.get(name).map(|o| o.sha256.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &Path) -> Manifest {
        std::fs::write(dir.join("out.parquet"), b"12345").unwrap();
        let sha256 = crate::pipeline::fingerprint::file(&dir.join("out.parquet")).unwrap();
        Manifest {
            stage: "mine".into(),
            distill_version: "0".into(),
            config_hash: "c1".into(),
            config: serde_json::json!({}),
            inputs: [("student".to_string(), "s1".to_string())].into(),
            outputs: [("out.parquet".to_string(), OutputFile { sha256, bytes: 5 })].into(),
            rows: 1,
            started_unix: 0,
            finished_unix: 0,
            seconds: 0.0,
            summary: serde_json::json!({}),
        }
    }

    #[test]
    fn check_reports_the_first_reason_to_rerun() {
        let d = tempfile::tempdir().unwrap();
        let m = manifest(d.path());
        let inputs: BTreeMap<String, String> = [("student".to_string(), "s1".to_string())].into();
        assert_eq!(m.check(d.path(), "c1", &inputs), Ok(()));
        assert_eq!(
            m.check(d.path(), "c2", &inputs),
            Err(Staleness::ConfigChanged)
        );
        let other: BTreeMap<String, String> = [("student".to_string(), "s2".to_string())].into();
        assert_eq!(
            m.check(d.path(), "c1", &other),
            Err(Staleness::InputChanged("student".into()))
        );
        // The same size, another content.
        std::fs::write(d.path().join("out.parquet"), b"12346").unwrap();
        assert_eq!(
            m.check(d.path(), "c1", &inputs),
            Err(Staleness::OutputModified("out.parquet".into()))
        );
        std::fs::write(d.path().join("out.parquet"), b"123").unwrap();
        assert_eq!(
            m.check(d.path(), "c1", &inputs),
            Err(Staleness::OutputChanged("out.parquet".into()))
        );
    }

    #[test]
    fn round_trips_through_json() {
        let d = tempfile::tempdir().unwrap();
        let m = manifest(d.path());
        m.write(d.path()).unwrap();
        assert_eq!(Manifest::read(d.path()).unwrap(), Some(m));
    }
}
