//! File + environment → [`Config`], via the `config` crate for merging.

use crate::schema::{self, ENV_SEPARATOR};
use crate::{ConfError, Config};
use config::{Environment, File, FileFormat, Map};
use std::ffi::OsString;
use std::path::Path;

/// Reads the file ourselves so a missing file is a plain "cannot read" error with the path.
pub(crate) fn load_file(path: &Path, env: Vec<(String, OsString)>) -> Result<Config, ConfError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfError::Read {
        path: path.to_owned(),
        source,
    })?;
    load_str(&text, &path.display().to_string(), Some(env))
}

/// `env: None` means "ignore the environment" (not the same as an empty one only in intent).
pub(crate) fn load_str(
    text: &str,
    origin: &str,
    env: Option<Vec<(String, OsString)>>,
) -> Result<Config, ConfError> {
    let mut problems = Vec::new();
    let mut builder = config::Config::builder().add_source(File::from_str(text, FileFormat::Toml));
    if let Some(env) = env {
        let mut accepted = Map::new();
        for (var, value) in env {
            match schema::env_key(&var) {
                None => {}
                Some(Err(p)) => problems.push(p),
                Some(Ok(_)) => match value.into_string() {
                    Ok(v) => {
                        accepted.insert(var, v);
                    }
                    Err(_) => problems.push(crate::Problem::at(
                        var.clone(),
                        "environment variable is not valid UTF-8",
                    )),
                },
            }
        }
        // Deterministic order regardless of how the environment was listed.
        problems.sort_by(|a, b| a.key.cmp(&b.key));
        builder = builder.add_source(
            Environment::with_prefix("PINION")
                .prefix_separator("_")
                .separator(ENV_SEPARATOR)
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("nvme_tcp.listen")
                .with_list_parse_key("iscsi.listen")
                .source(Some(accepted)),
        );
    }
    let merged = builder.build().map_err(|e| match e {
        config::ConfigError::FileParse { cause, .. } => ConfError::Syntax {
            origin: origin.to_owned(),
            message: cause.to_string(),
        },
        other => ConfError::Config(other),
    })?;
    problems.extend(schema::check(&merged.cache));
    if !problems.is_empty() {
        return Err(ConfError::Invalid(problems));
    }
    let config: Config = merged.try_deserialize()?;
    config.validate()?;
    Ok(config)
}

/// See [`crate::ManagementConfig::of_file_leniently`].
pub(crate) fn management_leniently(path: &Path) -> crate::ManagementConfig {
    let from_env = std::env::var_os("PINION_MANAGEMENT__SOCKET").map(std::path::PathBuf::from);
    let from_file = || {
        let text = std::fs::read_to_string(path).ok()?;
        let c = config::Config::builder().add_source(File::from_str(&text, FileFormat::Toml)).build().ok()?;
        c.get_string("management.socket").ok().map(std::path::PathBuf::from)
    };
    crate::ManagementConfig { socket: from_env.or_else(from_file) }
}
