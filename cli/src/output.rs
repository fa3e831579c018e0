//! Files the commands write, complete or not at all.
//!
//! The content goes to a temporary file beside the destination (`.NAME.PID-N.tmp`), renamed onto
//! it once everything is written ([`OutputFile::commit`]). A command that fails or returns early
//! drops the [`OutputFile`] uncommitted, which removes the temporary file: the destination is left
//! as it was, absent or holding its earlier content. A destination that exists and is not a
//! regular file (a pipe, a device), or lies under `/dev` or `/proc` (`/dev/stdout`), is a stream
//! and is written in place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::CliError;

/// Attempts at a temporary name that no other file has.
const TEMP_ATTEMPTS: u32 = 64;

/// A file being written: renamed into place by [`OutputFile::commit`], removed when dropped
/// before.
#[derive(Debug)]
pub struct OutputFile {
    /// The destination as given, for errors.
    path: PathBuf,
    /// Where the temporary file is renamed to: the destination, a link to it resolved.
    target: PathBuf,
    /// The temporary file; `None` when the destination is written in place.
    temp: Option<PathBuf>,
    /// The open file (`None` once committed).
    file: Option<BufWriter<File>>,
}

impl OutputFile {
    /// Starts writing the file at `path`.
    ///
    /// # Errors
    /// [`CliError`] naming `path` when its folder does not take a new file (or, for a
    /// destination written in place, when it cannot be opened).
    pub fn create(path: &Path) -> Result<Self, CliError> {
        let io = |e| CliError::io(path, e);
        let in_place = |path: &Path| -> Result<Self, CliError> {
            let file = File::create(path).map_err(io)?;
            Ok(Self {
                path: path.to_path_buf(),
                target: path.to_path_buf(),
                temp: None,
                file: Some(BufWriter::new(file)),
            })
        };
        // A stream the system names as a file (`/dev/stdout`, `/proc/self/fd/1`) is written as
        // it goes, even when it leads to a regular file: that file is the caller's to handle.
        if path.starts_with("/dev") || path.starts_with("/proc") {
            return in_place(path);
        }
        let target = match fs::metadata(path) {
            // A device or a pipe (or a folder, which File::create refuses with its own error).
            Ok(meta) if !meta.is_file() => return in_place(path),
            // A link is followed: the file it names is replaced, not the link.
            Ok(_) => fs::canonicalize(path).map_err(io)?,
            Err(_) => path.to_path_buf(),
        };
        let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return in_place(path);
        };
        let pid = std::process::id();
        let mut last = io::Error::other("no temporary name");
        for attempt in 0..TEMP_ATTEMPTS {
            let temp = target.with_file_name(format!(".{name}.{pid}-{attempt}.tmp"));
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => {
                    return Ok(Self {
                        path: path.to_path_buf(),
                        target,
                        temp: Some(temp),
                        file: Some(BufWriter::new(file)),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
                Err(e) => return Err(io(e)),
            }
        }
        Err(io(last))
    }

    /// Flushes the content and puts it at the destination.
    ///
    /// # Errors
    /// [`CliError`] naming the destination when flushing or renaming fails (the temporary file
    /// is removed then).
    pub fn commit(mut self) -> Result<(), CliError> {
        let io = |e| CliError::io(&self.path, e);
        if let Some(file) = self.file.take() {
            file.into_inner().map_err(|e| io(e.into_error()))?;
        }
        if let Some(temp) = &self.temp {
            fs::rename(temp, &self.target).map_err(io)?;
            self.temp = None;
        }
        Ok(())
    }

    fn file(&mut self) -> io::Result<&mut BufWriter<File>> {
        self.file.as_mut().ok_or_else(|| io::Error::other("the file is already committed"))
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file()?.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file()?.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file()?.flush()
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        // Not committed: nothing of the content reaches the destination.
        drop(self.file.take());
        if let Some(temp) = self.temp.take() {
            let _ = fs::remove_file(temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("expertslab-output-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_committed_file_appears_whole_and_a_dropped_one_leaves_nothing() {
        let dir = temp_dir("commit");
        let path = dir.join("out.txt");
        let mut out = OutputFile::create(&path).unwrap();
        out.write_all(b"one\n").unwrap();
        assert!(!path.exists(), "nothing at the destination before the commit");
        out.commit().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "one\n");
        // A failed rewrite leaves the earlier content and no temporary file.
        let mut again = OutputFile::create(&path).unwrap();
        again.write_all(b"two\n").unwrap();
        drop(again);
        assert_eq!(fs::read_to_string(&path).unwrap(), "one\n");
        assert_eq!(names(&dir), ["out.txt"]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_the_path() {
        let err = OutputFile::create(Path::new("/nonexistent/expertslab/out.txt")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/expertslab/out.txt"), "{err}");
    }
}
