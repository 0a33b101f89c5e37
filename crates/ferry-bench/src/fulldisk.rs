//! A small file system for a data folder that fills up: a tmpfs of a fixed size mounted
//! over a temporary folder (root only), a ballast file that takes every free byte, and
//! freeing it again. `ferry bench faults --fault disk` and
//! `crates/ferry/tests/it/faults.rs` use it.
//!
//! The mount is lazily detached when the value is dropped (also after a panic in a
//! test), so nothing is left mounted behind.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub struct SmallDisk {
    /// Keeps the mount point until after the unmount (fields drop in order).
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` over a new temporary folder. Fails without root (or
    /// where mounting is not allowed, as in an unprivileged container).
    pub fn mount(bytes: u64) -> std::io::Result<SmallDisk> {
        let dir = tempfile::Builder::new().prefix("ferry-disk-").tempdir()?;
        let path = dir.path().to_path_buf();
        let target = CString::new(path.as_os_str().as_bytes())?;
        let opts = CString::new(format!("size={bytes},mode=0700"))?;
        // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SmallDisk {
            dir: Some(dir),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn ballast(&self) -> PathBuf {
        self.path.join("ballast")
    }

    /// Bytes still free.
    pub fn available(&self) -> u64 {
        let Ok(p) = CString::new(self.path.as_os_str().as_bytes()) else {
            return 0;
        };
        // SAFETY: statvfs writes into the zeroed struct we hand it.
        unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(p.as_ptr(), &mut s) != 0 {
                return 0;
            }
            s.f_bavail * s.f_frsize
        }
    }

    /// Takes every free byte but `leave` with a ballast file (appending to it if it
    /// exists); the bytes written.
    pub fn fill(&self, leave: u64) -> std::io::Result<u64> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.ballast())?;
        let block = vec![0xa5u8; 64 * 1024];
        let mut written = 0u64;
        let mut size = block.len();
        // Down to single bytes, so not even a page is left when `leave` is 0.
        while size > 0 {
            let room = self.available().saturating_sub(leave);
            if leave > 0 && room == 0 {
                break;
            }
            let size_now = if leave > 0 {
                size.min(room as usize)
            } else {
                size
            };
            match f.write(&block[..size_now]) {
                Ok(0) => size /= 2,
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => size /= 2,
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }

    /// Deletes the ballast.
    pub fn free(&self) -> std::io::Result<()> {
        match std::fs::remove_file(self.ballast()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if let Ok(p) = CString::new(self.path.as_os_str().as_bytes()) {
            // SAFETY: a valid path string; MNT_DETACH unmounts even while files are open
            // (a server still running on it lets go when it exits).
            unsafe {
                libc::umount2(p.as_ptr(), libc::MNT_DETACH);
            }
        }
        drop(self.dir.take());
    }
}
