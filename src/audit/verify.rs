//! `verify`: walks the log once, front to back, with one line of lookahead
//! (to tell "this line was altered" from "the previous one was").

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use super::line::{self, checkpoint_message, Parsed, ZERO_HASH};
use super::CheckpointVerifier;
use crate::error::{Error, Result};

/// The first line that breaks the log, 1-based, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    pub line: u64,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Lines in the file (a last line without a newline included).
    pub lines: u64,
    /// Checkpoints whose HMAC verified (before the first bad line).
    pub checkpoints: u64,
    /// The first bad line; `None`: the chain is intact.
    pub first_bad: Option<BadLine>,
    /// Lines after the last verified checkpoint: chain-checked but not
    /// authenticated (they could have been dropped or rewritten).
    pub unauthenticated_tail: u64,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.first_bad {
            Some(bad) => write!(
                f,
                "audit log is NOT intact: line {}: {} ({} lines, {} checkpoint(s) verified before it)",
                bad.line, bad.reason, self.lines, self.checkpoints
            ),
            None => write!(
                f,
                "audit log intact: {} lines, {} checkpoint(s) verified, {} line(s) after the last checkpoint not authenticated",
                self.lines, self.checkpoints, self.unauthenticated_tail
            ),
        }
    }
}

/// Checks the whole log at `path`: the chain from the first line to the
/// last, and every checkpoint's HMAC with `verifier`. Tampering is reported
/// in [`Report::first_bad`]; `Err` only when the file cannot be read or the
/// verifier (the HSM) cannot answer.
pub fn verify(path: &Path, verifier: &dyn CheckpointVerifier) -> Result<Report> {
    let file = File::open(path)
        .map_err(|e| Error::admin(format!("cannot open audit log {}: {e}", path.display())))?;
    verify_reader(BufReader::new(file), verifier).map_err(|e| match e {
        Error::Admin(m) => Error::admin(format!("audit log {}: {m}", path.display())),
        other => other,
    })
}

struct Rec {
    hash: [u8; 32],
    complete: bool,
    parsed: std::result::Result<Parsed, String>,
}

fn next_rec(r: &mut impl BufRead, buf: &mut Vec<u8>) -> Result<Option<Rec>> {
    buf.clear();
    let n = r
        .read_until(b'\n', buf)
        .map_err(|e: io::Error| Error::admin(format!("read error: {e}")))?;
    if n == 0 {
        return Ok(None);
    }
    let complete = buf.last() == Some(&b'\n');
    if complete {
        buf.pop();
    }
    Ok(Some(Rec {
        hash: line::line_hash(buf),
        complete,
        parsed: line::parse(buf),
    }))
}

pub(crate) fn verify_reader(
    mut r: impl BufRead,
    verifier: &dyn CheckpointVerifier,
) -> Result<Report> {
    let mut buf = Vec::new();
    // hash of line k-1 and of line k-2; "line 0" hashes to zeros.
    let mut before = [ZERO_HASH; 2];
    let mut k = 0u64;
    let mut checkpoints = 0u64;
    let mut last_checkpoint = 0u64;
    let mut first_bad = None;
    let mut cur = next_rec(&mut r, &mut buf)?;
    let mut look = next_rec(&mut r, &mut buf)?;
    while let Some(c) = cur.take() {
        k += 1;
        if first_bad.is_none() {
            match check(&c, look.as_ref(), &before, k) {
                Err(bad) => first_bad = Some(bad),
                Ok(Some(mac)) => {
                    let msg = checkpoint_message(k - 1, &before[0]);
                    if verifier.verify(&msg, mac)? {
                        checkpoints += 1;
                        last_checkpoint = k;
                    } else {
                        first_bad = Some(BadLine {
                            line: k,
                            reason: "checkpoint HMAC does not verify: the checkpoint was forged, \
                                     or the log up to it was rewritten"
                                .into(),
                        });
                    }
                }
                Ok(None) => {}
            }
        }
        before = [c.hash, before[0]];
        cur = look;
        look = next_rec(&mut r, &mut buf)?;
    }
    Ok(Report {
        lines: k,
        checkpoints,
        first_bad,
        unauthenticated_tail: k - last_checkpoint,
    })
}

/// Checks line `k` given the hashes of the two lines before it; on success
/// returns its MAC if it is a checkpoint.
fn check<'c>(
    c: &'c Rec,
    look: Option<&Rec>,
    before: &[[u8; 32]; 2],
    k: u64,
) -> std::result::Result<Option<&'c [u8]>, BadLine> {
    let bad = |line: u64, reason: String| Err(BadLine { line, reason });
    if !c.complete {
        return bad(
            k,
            "incomplete line: the file ends without a newline (cut short mid-line)".into(),
        );
    }
    let p = match &c.parsed {
        Ok(p) => p,
        Err(why) => return bad(k, why.clone()),
    };
    if p.seq == k && p.prev == before[0] {
        return Ok(p.mac.as_deref());
    }
    // Diagnose: which line is the culprit, and how.
    let next = look
        .filter(|l| l.complete)
        .and_then(|l| l.parsed.as_ref().ok().map(|p| (l.hash, p)));
    let next_continues_from_prev_line =
        next.is_some_and(|(_, n)| n.seq == k && n.prev == before[0]);
    if p.seq == k + 1 && next_continues_from_prev_line && next.is_some_and(|(h, _)| p.prev == h) {
        return bad(k, format!("lines {k} and {} are in the wrong order", k + 1));
    }
    if next_continues_from_prev_line {
        return bad(
            k,
            format!(
                "inserted line: line {} continues the chain from line {}",
                k + 1,
                k - 1
            ),
        );
    }
    if k >= 2 && p.seq == k - 1 && p.prev == before[1] {
        return bad(
            k - 1,
            format!(
                "inserted line: line {k} continues the chain from line {}",
                k - 2
            ),
        );
    }
    if p.seq == k {
        // Only `prev` is wrong.
        if k == 1 {
            return bad(
                1,
                "the first line's prev is not 64 zeros: lines were removed from the start, \
                 or the line was altered"
                    .into(),
            );
        }
        return match next {
            Some((_, n)) if n.prev == c.hash => bad(
                k - 1,
                format!(
                    "line {} was altered: its SHA-256 no longer matches prev of line {k}",
                    k - 1
                ),
            ),
            None if look.is_none() => bad(
                k - 1,
                format!(
                    "line {} or line {k} was altered: prev of line {k} does not match \
                     the SHA-256 of line {}",
                    k - 1,
                    k - 1
                ),
            ),
            _ => bad(
                k,
                format!(
                    "line {k} was altered: its prev does not match the SHA-256 of line {}",
                    k - 1
                ),
            ),
        };
    }
    if p.prev == before[0] {
        return bad(
            k,
            format!(
                "line {k} was altered: sequence number {}, expected {k}",
                p.seq
            ),
        );
    }
    if p.seq > k {
        bad(
            k,
            format!(
                "sequence number {} where {k} was expected: line(s) removed before line {k}, \
                 or lines reordered",
                p.seq
            ),
        )
    } else {
        bad(
            k,
            format!(
                "sequence number {} where {k} was expected: a line repeated or out of order",
                p.seq
            ),
        )
    }
}
