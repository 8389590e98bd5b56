//! A completion queue, polled without blocking.

use super::context::Context;
use super::os_error;
use crate::Error;
use rdma_sys::*;
use std::sync::Arc;

/// A completion queue.
pub struct Cq {
    pub(super) cq: *mut ibv_cq,
    _ctx: Arc<Context>,
}

// SAFETY: CQs are thread-safe verbs objects; each Cq is polled by one owner.
unsafe impl Send for Cq {}

impl Cq {
    /// Creates a queue of at least `entries` entries.
    pub fn new(ctx: Arc<Context>, entries: i32) -> Result<Self, Error> {
        // SAFETY: ctx is open; no channel and no vector (we busy-poll).
        let cq = unsafe {
            ibv_create_cq(
                ctx.ctx,
                entries,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if cq.is_null() {
            return Err(os_error("ibv_create_cq"));
        }
        Ok(Self { cq, _ctx: ctx })
    }

    /// Polls up to `wc.len()` completions into `wc`; returns how many. Never blocks or allocates.
    #[inline]
    pub fn poll(&mut self, wc: &mut [ibv_wc]) -> Result<usize, Error> {
        // SAFETY: cq is live; wc has room for wc.len() entries.
        let n = unsafe { ibv_poll_cq(self.cq, wc.len() as i32, wc.as_mut_ptr()) };
        if n < 0 {
            return Err(Error::Protocol(format!("ibv_poll_cq failed ({n})")));
        }
        Ok(n as usize)
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: the QPs using this CQ hold no reference to it but are dropped first by every
        // owner (field order), so no QP is attached when it is destroyed.
        unsafe { ibv_destroy_cq(self.cq) };
    }
}

/// A zeroed work completion array entry.
pub fn empty_wc() -> ibv_wc {
    // SAFETY: ibv_wc is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Text of a completion status.
pub fn status_text(status: ibv_wc_status::Type) -> String {
    // SAFETY: ibv_wc_status_str returns a static C string for any value.
    unsafe { std::ffi::CStr::from_ptr(ibv_wc_status_str(status)) }
        .to_string_lossy()
        .into_owned()
}
