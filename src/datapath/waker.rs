//! The eventfd that wakes a shard from any thread, whichever datapath the shard waits in.
//!
//! Other threads hold a [`Waker`] and write to the eventfd; the shard's datapath waits on it
//! together with its sockets (an io_uring read, or `poll(2)`) and reads it to reset it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

/// Wakes a shard's datapath wait from any thread.
#[derive(Debug, Clone)]
pub struct Waker(Arc<OwnedFd>);

impl Waker {
    /// Makes the shard's pending datapath wait return.
    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: the eventfd is open for as long as this Arc lives; we pass a local 8-byte
        // buffer, which is what an eventfd write takes, and the kernel only reads it during
        // the call. A failed write (counter saturated) still leaves the eventfd readable.
        unsafe {
            libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len());
        }
    }

    /// The eventfd itself, for the shard's datapath to wait on and read.
    pub(super) fn fd(&self) -> Arc<OwnedFd> {
        self.0.clone()
    }
}

/// Creates the eventfd a shard waits on, and the waker that other threads hold.
pub fn waker() -> io::Result<Waker> {
    // SAFETY: plain system call; on success we take sole ownership of the new descriptor.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    Ok(Waker(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })))
}
