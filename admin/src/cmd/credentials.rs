//! `krouter-admin credentials set|list|remove`. Values come from stdin or a no-echo prompt
//! and are stored encrypted; nothing ever prints them.

use krouter_config::store::CredentialKind;

use crate::cli::{CredentialKindArg, CredentialNameArg, CredentialSetArgs};
use crate::context::Context;
use crate::error::Error;
use crate::output::{CredentialRow, Outcome, time};
use crate::prompt;

pub(crate) fn set(ctx: &Context<'_>, args: &CredentialSetArgs) -> Result<Outcome, Error> {
    check_name(&args.name)?;
    let kind = match args.kind {
        CredentialKindArg::Openai => CredentialKind::OpenAi,
        CredentialKindArg::Anthropic => CredentialKind::Anthropic,
        CredentialKindArg::OpenaiCompatible => CredentialKind::OpenAiCompatible,
        CredentialKindArg::Generic => CredentialKind::Generic,
    };
    let mut writer = ctx.writer()?;
    let value = prompt::read_secret(&format!("value for credential {}: ", args.name))?;
    let fingerprint = writer.transaction(&super::entry("credentials.set", &args.name), |tx| {
        tx.set_credential(&args.name, kind, &value)
    })?;
    Ok(Outcome::CredentialSet {
        name: args.name.clone(),
        kind: kind.as_str(),
        fingerprint,
    })
}

pub(crate) fn list(ctx: &Context<'_>) -> Result<Outcome, Error> {
    let writer = ctx.writer()?;
    let credentials = writer
        .reader_view()
        .credentials()?
        .into_iter()
        .map(|c| CredentialRow {
            name: c.name,
            kind: c.kind.as_str(),
            fingerprint: c.fingerprint,
            created: time(c.created_at),
            updated: time(c.updated_at),
        })
        .collect();
    Ok(Outcome::Credentials { credentials })
}

pub(crate) fn remove(ctx: &Context<'_>, args: &CredentialNameArg) -> Result<Outcome, Error> {
    let mut writer = ctx.writer()?;
    writer.transaction(&super::entry("credentials.remove", &args.name), |tx| {
        tx.remove_credential(&args.name)
    })?;
    Ok(Outcome::CredentialRemoved {
        name: args.name.clone(),
    })
}

/// The policy's name rule: 1-64 letters, digits, `.`, `_`, `-`, starting alphanumeric.
fn check_name(name: &str) -> Result<(), Error> {
    if krouter_policy::is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "a credential name is 1-{} letters, digits, '.', '_' or '-', starting with a letter or digit",
            krouter_policy::MAX_NAME
        )))
    }
}
