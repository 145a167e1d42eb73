//! Careful file access: size-limited reads, secret files that must be private, files that
//! are created new at mode 0600 and never replace an existing one, and atomic replacement.
//! Linux-only, like the sandbox the proxy runs in.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::Error;

/// Mode of every secret file krouter creates.
pub const PRIVATE_FILE: u32 = 0o600;
/// Mode of files that hold nothing secret (public keys, signatures).
pub const PUBLIC_FILE: u32 = 0o644;
/// Mode of directories krouter creates.
pub const PRIVATE_DIR: u32 = 0o700;

/// Reads a whole file of at most `limit` bytes.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    let file = File::open(path).map_err(|e| Error::io(path, "read the file", e))?;
    let mut bytes = Vec::new();
    read_at_most(file, path, limit, &mut bytes)?;
    Ok(bytes)
}

/// Reads a secret file of at most `limit` bytes, refusing one that group or others can read.
/// The bytes are wiped from memory when dropped.
pub fn read_secret(path: &Path, limit: u64) -> Result<Zeroizing<Vec<u8>>, Error> {
    let file = File::open(path).map_err(|e| Error::io(path, "read the file", e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(path, "read the file's permissions", e))?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    // Sized up front so the buffer never reallocates and leaves unwiped copies behind.
    let capacity = usize::try_from(limit.saturating_add(1)).unwrap_or(usize::MAX);
    let mut bytes = Zeroizing::new(Vec::with_capacity(capacity.min(1 << 20)));
    read_at_most(file, path, limit, &mut bytes)?;
    Ok(bytes)
}

/// Reads `file` into `buf`, failing if it holds more than `limit` bytes.
fn read_at_most(file: File, path: &Path, limit: u64, buf: &mut Vec<u8>) -> Result<(), Error> {
    file.take(limit.saturating_add(1))
        .read_to_end(buf)
        .map_err(|e| Error::io(path, "read the file", e))?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > limit {
        return Err(Error::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(())
}

/// Creates `dir` and its missing parents with mode 0700; an existing directory is kept.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
        .map_err(|e| Error::io(dir, "create the directory", e))
}

/// Creates `path` with `mode` and writes `bytes`; fails if the file already exists.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Error::Exists {
                path: path.to_owned(),
            },
            _ => Error::io(path, "create the file", e),
        })?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written {
        // A half-written key or signature is worse than none.
        let _removed = fs::remove_file(path);
        return Err(Error::io(path, "write the file", e));
    }
    Ok(())
}

/// Flushes a directory's entries (a new or renamed file in it) to disk.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, "flush the directory", e))
}

/// An exclusive advisory lock (`flock`) on `path`, created 0600 if missing, held until the
/// value is dropped. Blocks while another process holds it.
pub struct FileLock {
    /// Held only to keep the lock; closing the file releases it.
    _file: File,
}

impl FileLock {
    /// Waits for and takes the lock.
    pub fn acquire(path: &Path) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE)
            .open(path)
            .map_err(|e| Error::io(path, "open the lock file", e))?;
        file.lock()
            .map_err(|e| Error::io(path, "take the lock", e))?;
        Ok(Self { _file: file })
    }
}

/// Replaces `path` with `bytes` atomically: readers see the old file or the new one, never
/// a partial write.
pub fn replace_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let _stale = fs::remove_file(&tmp);
    write_new(&tmp, bytes, mode)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _removed = fs::remove_file(&tmp);
        return Err(Error::io(path, "replace the file", e));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Persist the rename; a failure here leaves a correct file that may not survive a
        // power cut, which is not worth failing the command over.
        let _synced = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn write_new_never_overwrites_and_sets_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_new(&path, b"one", PRIVATE_FILE).unwrap();
        assert!(matches!(
            write_new(&path, b"two", PRIVATE_FILE),
            Err(Error::Exists { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn secrets_readable_by_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_new(&path, b"s", PUBLIC_FILE).unwrap();
        let err = read_secret(&path, 10).unwrap_err();
        assert!(err.to_string().contains("chmod go-rwx"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(&path, 10).unwrap().as_slice(), b"s");
    }

    #[test]
    fn reads_are_limited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_new(&path, b"12345", PUBLIC_FILE).unwrap();
        assert!(read_limited(&path, 5).is_ok());
        assert!(matches!(
            read_limited(&path, 4),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            read_limited(&dir.path().join("missing"), 4),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn replace_atomic_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sig");
        replace_atomic(&path, b"a", PUBLIC_FILE).unwrap();
        replace_atomic(&path, b"b", PUBLIC_FILE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"b");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
