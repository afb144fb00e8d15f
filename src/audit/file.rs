//! The log file: open, exclusive `flock` per append, the chain head read
//! from the end of the file (cached while nobody else appends), one write in
//! `O_APPEND` mode.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::line::{self, ZERO_HASH};

/// A last line longer than this is not read back (lines are < 4 KiB).
const MAX_TAIL_LINE: u64 = 1 << 20;
const CHUNK: u64 = 8192;

/// The chain head as seen by this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    /// File length this head describes (cache key).
    pub len: u64,
    /// Sequence number and hash of the last line (0 and zeros: empty file).
    pub seq: u64,
    pub hash: [u8; 32],
    /// The file does not end with a newline (a torn or truncated line).
    pub needs_newline: bool,
    /// Sequence number and time of the last checkpoint this process knows
    /// of (0 and the time the file was first read: none known).
    pub ckpt_seq: u64,
    pub ckpt_unix: u64,
}

impl Head {
    pub(crate) fn advance(&mut self, line: &[u8]) {
        self.seq += 1;
        self.hash = line::line_hash(line);
        self.len += line.len() as u64 + 1;
        self.needs_newline = false;
    }
}

pub(crate) struct LogFile {
    path: PathBuf,
    file: File,
    /// The process that opened `file`: after fork() a child opens its own,
    /// since a flock belongs to the open file description the two share.
    pid: u32,
    dev_ino: (u64, u64),
    head: Option<Head>,
    /// Mode of the file when it is created here.
    mode: u32,
}

fn open_file(path: &Path, mode: u32) -> io::Result<(File, (u64, u64))> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(mode)
        .open(path)?;
    let m = file.metadata()?;
    if !m.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok((file, (m.dev(), m.ino())))
}

impl LogFile {
    /// Opens (creating with `mode`) the log at `path`.
    pub(crate) fn open(path: &Path, mode: u32) -> io::Result<LogFile> {
        let (file, dev_ino) = open_file(path, mode)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            pid: std::process::id(),
            dev_ino,
            head: None,
            mode,
        })
    }

    /// Reopen after fork(), or when the path now names another file (the
    /// log was rotated or removed: a new file starts a new chain).
    fn refresh(&mut self) -> io::Result<()> {
        let pid = std::process::id();
        let moved = match std::fs::metadata(&self.path) {
            Ok(m) => (m.dev(), m.ino()) != self.dev_ino,
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(e),
        };
        if pid != self.pid || moved {
            let (file, dev_ino) = open_file(&self.path, self.mode)?;
            self.file = file;
            self.dev_ino = dev_ino;
            self.pid = pid;
            self.head = None;
        }
        Ok(())
    }

    /// Takes the exclusive lock (blocking) and returns the chain head.
    pub(crate) fn lock(&mut self) -> io::Result<Locked<'_>> {
        self.refresh()?;
        // flock(LOCK_EX) on Linux: shared with every process appending.
        self.file.lock()?;
        let mut locked = Locked { log: self };
        locked.read_head()?;
        Ok(locked)
    }

    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    pub(crate) fn forget_head(&mut self) {
        self.head = None;
    }
}

/// The lock held; unlocked on drop.
pub(crate) struct Locked<'a> {
    log: &'a mut LogFile,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // Closing the file would also release it.
        let _ = self.log.file.unlock();
    }
}

impl Locked<'_> {
    pub(crate) fn head(&self) -> Head {
        // read_head() always leaves one behind.
        self.log.head.unwrap_or(Head {
            len: 0,
            seq: 0,
            hash: ZERO_HASH,
            needs_newline: false,
            ckpt_seq: 0,
            ckpt_unix: 0,
        })
    }

    /// Re-read the last line only if the file is not the length we left it.
    fn read_head(&mut self) -> io::Result<()> {
        let len = self.log.file.metadata()?.len();
        let cached = self.log.head;
        if cached.is_some_and(|h| h.len == len) {
            return Ok(());
        }
        // No checkpoint known yet: count lines from the start of the file
        // and time from now.
        let (ckpt_seq, ckpt_unix) =
            cached.map_or_else(|| (0, super::now_unix()), |h| (h.ckpt_seq, h.ckpt_unix));
        let mut head = Head {
            len,
            seq: 0,
            hash: ZERO_HASH,
            needs_newline: false,
            ckpt_seq,
            ckpt_unix,
        };
        if len > 0 {
            let (last, complete) = last_line(&self.log.file, len)?;
            head.hash = line::line_hash(&last);
            head.needs_newline = !complete;
            match line::parse(&last) {
                Ok(p) if complete => {
                    head.seq = p.seq;
                    if p.mac.is_some() {
                        head.ckpt_seq = p.seq;
                        head.ckpt_unix = p.unix;
                    }
                }
                _ => {
                    // The line is damaged (verify will name it); keep
                    // appending after it rather than lose events.
                    crate::log_warn!(
                        "audit: the last line of {} is damaged; appending after it",
                        self.log.path.display()
                    );
                    head.seq = cached.map_or(0, |h| h.seq) + 1;
                }
            }
            if head.ckpt_seq > head.seq {
                head.ckpt_seq = 0;
            }
        }
        self.log.head = Some(head);
        Ok(())
    }

    /// Appends `buf` (whole lines) and records `head` as the new chain head.
    /// Other appenders hold off while we hold the lock, so a short write is
    /// completed by further writes; one write(2) is the normal case.
    pub(crate) fn append(&mut self, buf: &[u8], head: Head) -> io::Result<()> {
        self.log.head = None;
        let mut f = &self.log.file;
        f.write_all(buf)?;
        self.log.head = Some(head);
        Ok(())
    }
}

/// The last line of the file and whether it ends with a newline; reads
/// backwards from the end in chunks, never the whole file.
fn last_line(file: &File, len: u64) -> io::Result<(Vec<u8>, bool)> {
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    let complete = last[0] == b'\n';
    let end = if complete { len - 1 } else { len };
    let mut start = end;
    let mut tail: Vec<u8> = Vec::new();
    while start > 0 {
        let n = CHUNK.min(start);
        let mut chunk = vec![0u8; n as usize];
        file.read_exact_at(&mut chunk, start - n)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            chunk.drain(..=i);
            chunk.extend_from_slice(&tail);
            return Ok((chunk, complete));
        }
        chunk.extend_from_slice(&tail);
        tail = chunk;
        start -= n;
        if end - start > MAX_TAIL_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the last line of the audit log is longer than 1 MiB",
            ));
        }
    }
    Ok((tail, complete))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_line_finds_lines_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let long = "x".repeat(20_000);
        std::fs::write(&p, format!("first\n{long}\n")).unwrap();
        let f = File::open(&p).unwrap();
        let len = f.metadata().unwrap().len();
        assert_eq!(last_line(&f, len).unwrap(), (long.into_bytes(), true));

        std::fs::write(&p, "only").unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(last_line(&f, 4).unwrap(), (b"only".to_vec(), false));

        std::fs::write(&p, "a\nb\npart").unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(last_line(&f, 8).unwrap(), (b"part".to_vec(), false));

        std::fs::write(&p, "\n").unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(last_line(&f, 1).unwrap(), (Vec::new(), true));
    }

    #[test]
    fn head_is_cached_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut log = LogFile::open(&p, 0o600).unwrap();
        let h = log.lock().unwrap().head();
        assert_eq!((h.len, h.seq, h.hash), (0, 0, ZERO_HASH));
        {
            let mut l = log.lock().unwrap();
            let mut h = l.head();
            h.advance(b"{}");
            l.append(b"{}\n", h).unwrap();
        }
        assert_eq!(log.lock().unwrap().head().seq, 1);
        // Someone else appends a line: the head is read again from the file.
        let stamp = line::Stamp {
            unix: 5,
            pid: 1,
            uid: 1,
            token: "t",
        };
        let other = line::render(
            9,
            &ZERO_HASH,
            &stamp,
            &line::Body {
                op: line::CHECKPOINT,
                mac: Some(&[1]),
                ..Default::default()
            },
        )
        .unwrap();
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&other).unwrap();
        f.write_all(b"\n").unwrap();
        let h = log.lock().unwrap().head();
        assert_eq!((h.seq, h.ckpt_seq, h.ckpt_unix), (9, 9, 5));
        assert_eq!(h.hash, line::line_hash(&other));
    }
}
