//! Checkpoint import and export: Hugging Face `model.safetensors` / `pytorch_model.bin`
//! to and from a tch `VarStore` whose variables carry the Hugging Face names.
use crate::error::{Error, Result, TorchContext};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Kind, Tensor};

/// How the variables of a model are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `BertModel`: `embeddings.*`, `encoder.*`, `pooler.*` (no prefix).
    Encoder,
    /// `BertForSequenceClassification`: `bert.*` and `classifier.*`.
    SequenceClassification,
}

impl Layout {
    fn describe(self) -> &'static str {
        match self {
            Layout::Encoder => "BertModel",
            Layout::SequenceClassification => "BertForSequenceClassification",
        }
    }

    /// The variable a checkpoint tensor maps to, or `None` for buffers we do not keep.
    fn target(self, name: &str) -> Option<String> {
        if name.ends_with("position_ids") {
            return None; // a buffer (arange) that old checkpoints saved
        }
        let name = canonical_name(name);
        Some(match self {
            Layout::Encoder => name.strip_prefix("bert.").unwrap_or(&name).to_string(),
            Layout::SequenceClassification => {
                if name.starts_with("bert.") || name.starts_with("classifier.") {
                    name
                } else {
                    format!("bert.{name}")
                }
            }
        })
    }
}

/// TensorFlow-era LayerNorm names (`gamma`, `beta`) to PyTorch's (`weight`, `bias`).
pub fn canonical_name(name: &str) -> String {
    if let Some(stem) = name.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = name.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        name.to_string()
    }
}

/// The weights file of a model directory: `model.safetensors`, else `pytorch_model.bin`.
pub fn weights_file(dir: &Path) -> Result<PathBuf> {
    ["model.safetensors", "pytorch_model.bin"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .ok_or_else(|| {
            Error::model(
                dir,
                "no model.safetensors or pytorch_model.bin in the model directory",
            )
        })
}

/// Read every tensor of a safetensors or PyTorch (zip pickle) weights file on the CPU.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let ctx = || format!("reading {}", path.display());
    if path.extension().is_some_and(|e| e == "safetensors") {
        Tensor::read_safetensors(path).ctx(ctx)
    } else {
        Tensor::loadz_multi(path).ctx(ctx)
    }
}

/// What an import did besides loading tensors.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub file: PathBuf,
    pub loaded: usize,
    /// Variables left at their fresh initialisation (allowed by the caller).
    pub initialised: Vec<String>,
}

/// Copy the tensors of `file` into the variables of `vs`. Every variable must be found
/// unless its name starts with one of `fresh_prefixes`; every tensor must map to a
/// variable of the same shape. Errors name the tensor and the file.
pub fn import(
    vs: &mut VarStore,
    file: &Path,
    layout: Layout,
    fresh_prefixes: &[&str],
) -> Result<ImportReport> {
    let tensors = read_tensors(file)?;
    let vars = vs.variables();
    let mut seen = BTreeSet::new();
    let _guard = tch::no_grad_guard();
    for (name, tensor) in tensors {
        let Some(target) = layout.target(&name) else {
            continue;
        };
        let Some(var) = vars.get(&target) else {
            return Err(Error::UnexpectedTensor {
                path: file.to_path_buf(),
                name,
                model: layout.describe(),
            });
        };
        if var.size() != tensor.size() {
            return Err(Error::ShapeMismatch {
                path: file.to_path_buf(),
                name,
                expected: var.size(),
                got: tensor.size(),
            });
        }
        let mut var = var.shallow_clone();
        let src = tensor
            .f_to_kind(var.kind())
            .and_then(|t| t.f_to_device(var.device()))
            .ctx(|| format!("converting `{name}` from {}", file.display()))?;
        var.f_copy_(&src)
            .ctx(|| format!("loading `{name}` from {}", file.display()))?;
        seen.insert(target);
    }
    let mut initialised = Vec::new();
    for name in vars.keys().collect::<BTreeSet<_>>() {
        if seen.contains(name) {
            continue;
        }
        if fresh_prefixes.iter().any(|p| name.starts_with(p)) {
            initialised.push(name.clone());
        } else {
            return Err(Error::MissingTensor {
                path: file.to_path_buf(),
                name: name.clone(),
            });
        }
    }
    Ok(ImportReport {
        file: file.to_path_buf(),
        loaded: seen.len(),
        initialised,
    })
}

/// Write every variable of `vs` as fp32 to a safetensors file, names sorted.
pub fn export(vs: &VarStore, path: &Path) -> Result<()> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let tensors: Vec<(String, Tensor)> = vars
        .into_iter()
        .map(|(n, t)| {
            let t = t
                .detach()
                .to_device(tch::Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous();
            (n, t)
        })
        .collect();
    Tensor::write_safetensors(&tensors, path).ctx(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_names_for_each_layout() {
        let enc = Layout::Encoder;
        assert_eq!(
            enc.target("bert.encoder.layer.0.output.LayerNorm.gamma")
                .as_deref(),
            Some("encoder.layer.0.output.LayerNorm.weight")
        );
        assert_eq!(
            enc.target("embeddings.LayerNorm.beta").as_deref(),
            Some("embeddings.LayerNorm.bias")
        );
        assert_eq!(enc.target("embeddings.position_ids"), None);
        let ce = Layout::SequenceClassification;
        assert_eq!(
            ce.target("pooler.dense.weight").as_deref(),
            Some("bert.pooler.dense.weight")
        );
        assert_eq!(
            ce.target("classifier.bias").as_deref(),
            Some("classifier.bias")
        );
        assert_eq!(
            ce.target("bert.embeddings.word_embeddings.weight")
                .as_deref(),
            Some("bert.embeddings.word_embeddings.weight")
        );
    }
}
