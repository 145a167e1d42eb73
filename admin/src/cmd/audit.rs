//! `krouter-admin audit list|verify`.

use crate::context::Context;
use crate::error::Error;
use crate::output::{AuditRow, Outcome, time};

pub(crate) fn list(ctx: &Context<'_>) -> Result<Outcome, Error> {
    let writer = ctx.writer()?;
    let rows = writer
        .reader_view()
        .audit()?
        .into_iter()
        .map(|r| AuditRow {
            seq: r.seq,
            at: time(r.at),
            actor: r.actor,
            action: r.action,
            target: r.target,
            outcome: r.outcome,
        })
        .collect();
    Ok(Outcome::Audit { rows })
}

pub(crate) fn verify(ctx: &Context<'_>) -> Result<Outcome, Error> {
    let writer = ctx.writer()?;
    let rows = writer.reader_view().verify_audit()?;
    Ok(Outcome::AuditVerified { rows })
}
