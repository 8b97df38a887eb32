//! What the subcommands share.

use anyhow::Context;

pub fn admin_token(token: Option<String>, file: &std::path::Path) -> anyhow::Result<String> {
    match token {
        Some(t) => Ok(t),
        None => Ok(std::fs::read_to_string(file)
            .with_context(|| {
                format!(
                    "reading the admin token from {} (or pass --admin-token)",
                    file.display()
                )
            })?
            .trim()
            .to_owned()),
    }
}
