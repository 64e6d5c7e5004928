//! Library errors. Every variant keeps its source and the file or key involved, so the
//! binary can print a whole cause chain that tells the user what to fix.
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    /// A model directory that cannot be loaded as the model it should be (missing files,
    /// an unsupported architecture or pooling, variables a setting needs).
    #[error("model {}: {message}", dir.display())]
    Model { dir: PathBuf, message: String },

    /// A stage's output (a shard, a table) that does not read back as it was written.
    #[error("{}: {message} (remove it, or rerun the stage with --force)", path.display())]
    Output { path: PathBuf, message: String },

    #[error("{}:{line}: {message}", path.display())]
    Input {
        path: PathBuf,
        line: usize,
        message: String,
    },

    #[error("{}: tokenizer: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },

    #[error("{}: tensor `{name}` is missing from the checkpoint", path.display())]
    MissingTensor { path: PathBuf, name: String },

    #[error("{}: unexpected tensor `{name}` in the checkpoint (not part of a {model})", path.display())]
    UnexpectedTensor {
        path: PathBuf,
        name: String,
        model: &'static str,
    },

    #[error("{}: tensor `{name}` has shape {got:?}, the model expects {expected:?}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<i64>,
        got: Vec<i64>,
    },

    #[error("{}: unsupported: {message}", path.display())]
    Unsupported { path: PathBuf, message: String },

    /// Training data that cannot be used: the dataset (when one is to blame) and what is
    /// wrong with it.
    #[error("training data{}: {message}", dataset.as_ref().map(|d| format!(" of dataset `{d}`")).unwrap_or_default())]
    TrainingData {
        dataset: Option<String>,
        message: String,
    },

    /// A stage's input from an earlier stage is not recorded in that stage's manifest.
    #[error("{}: stage `{stage}` has no output `{file}` (rerun it: distill run --from {stage})", dir.display())]
    MissingUpstream {
        dir: PathBuf,
        stage: String,
        file: String,
    },

    #[error("{context}: {source}")]
    Torch {
        context: String,
        #[source]
        source: tch::TchError,
    },

    #[error("{}: parquet: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("{}: arrow: {source}", path.display())]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },

    #[error("invalid setting `{key}`: {message}")]
    Setting { key: String, message: String },

    /// The teacher gate stopped the run before `score` (exit code 4).
    #[error("{message}")]
    WeakTeacher { message: String },

    /// A `--gpus` worker that failed: the stage, its rank and the file holding its output.
    #[error("stage `{stage}`: worker rank {rank} {status}; its output: {}", log.display())]
    Worker {
        stage: String,
        rank: usize,
        status: String,
        log: PathBuf,
    },

    /// `--strict-health`: the run completed with health warnings (exit code 5).
    #[error("{count} health warning(s) with --strict-health: {first}")]
    Unhealthy { count: usize, first: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn model(dir: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Model {
            dir: dir.into(),
            message: message.into(),
        }
    }

    pub fn output(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Output {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn torch(context: impl Into<String>, source: tch::TchError) -> Self {
        Error::Torch {
            context: context.into(),
            source,
        }
    }
}

/// Attach a context string to tch errors (`f_*` ops).
pub trait TorchContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> TorchContext<T> for std::result::Result<T, tch::TchError> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::torch(context(), source))
    }
}

/// Read a JSON file into `T`, naming the file in any error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}
