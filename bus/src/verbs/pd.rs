//! A protection domain.

use super::context::Context;
use super::os_error;
use crate::Error;
use rdma_sys::*;
use std::sync::Arc;

/// A protection domain of a context.
pub struct Pd {
    pub(super) pd: *mut ibv_pd,
    pub(super) ctx: Arc<Context>,
}

// SAFETY: PDs are thread-safe verbs objects; the pointer is never aliased mutably.
unsafe impl Send for Pd {}
// SAFETY: as above.
unsafe impl Sync for Pd {}

impl Pd {
    /// Allocates a PD on `ctx`.
    pub fn new(ctx: Arc<Context>) -> Result<Arc<Self>, Error> {
        // SAFETY: ctx.ctx is an open context kept alive by the Arc we store.
        let pd = unsafe { ibv_alloc_pd(ctx.ctx) };
        if pd.is_null() {
            return Err(os_error("ibv_alloc_pd"));
        }
        Ok(Arc::new(Self { pd, ctx }))
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: QPs and MRs hold an Arc<Pd>, so none is left when the PD is freed.
        unsafe { ibv_dealloc_pd(self.pd) };
    }
}
