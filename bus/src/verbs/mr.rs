//! Memory regions over memory we own (page-aligned anonymous mappings).

use super::os_error;
use super::pd::Pd;
use crate::Error;
use memmap2::MmapMut;
use rdma_sys::*;
use std::sync::Arc;

/// Registered memory: an anonymous mapping and its registration.
pub struct Mr {
    mr: *mut ibv_mr,
    map: Option<MmapMut>,
    addr: *mut u8,
    len: usize,
    iova: u64,
    _pd: Arc<Pd>,
}

// SAFETY: the registration and the mapping are owned here; access to the bytes goes through
// raw pointers whose users uphold the protocol's ordering (completions, credit).
unsafe impl Send for Mr {}

impl Mr {
    /// Allocates `len` zeroed bytes and registers them with `access` flags.
    pub fn alloc(pd: Arc<Pd>, len: usize, access: ibv_access_flags) -> Result<Self, Error> {
        // Small regions (a credit word, inline headers) would waste most of a 2 MiB page.
        let mut map = if len >= crate::pages::HUGE_PAGE / 4 {
            let node = crate::numa::choose(pd.ctx.numa_node)?;
            crate::pages::alloc(len, "verbs memory region", node)?.0
        } else {
            MmapMut::map_anon(len.max(1)).map_err(|e| Error::io("verbs: allocating memory", e))?
        };
        let addr = map.as_mut_ptr();
        // SAFETY: addr..addr+len is our own mapping, which lives as long as this Mr.
        let mut this = unsafe { Self::register(pd, addr, len, access)? };
        this.map = Some(map);
        Ok(this)
    }

    /// Like [`alloc`](Self::alloc), for memory peers write into: registered zero-based
    /// (`ibv_reg_mr_iova2` with iova 0), so that the address announced to peers,
    /// [`remote_addr`](Self::remote_addr), is 0 and every address they use an offset into
    /// the region, not a virtual address of this process. Where the device refuses a
    /// zero-based registration, falls back to the virtual address (logged at debug level).
    ///
    /// Work requests that name this region by its lkey must use offsets too; the bus names
    /// such regions only as remote targets.
    pub fn alloc_zero_based(
        pd: Arc<Pd>,
        len: usize,
        access: ibv_access_flags,
    ) -> Result<Self, Error> {
        let node = crate::numa::choose(pd.ctx.numa_node)?;
        let (mut map, _pages) = crate::pages::alloc(len, "a verbs ring", node)?;
        let addr = map.as_mut_ptr();
        // SAFETY: pd is alive (Arc); addr..addr+len is our own mapping, which the returned Mr
        // keeps (`map`) for as long as the registration lives.
        let mr = unsafe { ibv_reg_mr_iova2(pd.pd, addr.cast(), len, 0, access.0) };
        if mr.is_null() {
            tracing::debug!(
                len,
                error = %std::io::Error::last_os_error(),
                "verbs: zero-based registration (ibv_reg_mr_iova2, iova 0) refused; \
                 announcing the region's virtual address instead"
            );
            return Self::alloc(pd, len, access);
        }
        Ok(Self {
            mr,
            map: Some(map),
            addr,
            len,
            iova: 0,
            _pd: pd,
        })
    }

    /// Registers memory owned elsewhere.
    ///
    /// # Safety
    /// `addr..addr + len` must stay mapped for as long as the returned `Mr` lives.
    pub unsafe fn register(
        pd: Arc<Pd>,
        addr: *mut u8,
        len: usize,
        access: ibv_access_flags,
    ) -> Result<Self, Error> {
        // SAFETY: pd is alive (Arc); the caller guarantees the memory outlives the Mr.
        let mr = unsafe { ibv_reg_mr(pd.pd, addr.cast(), len, access.0 as i32) };
        if mr.is_null() {
            return Err(os_error(
                "ibv_reg_mr (is the memlock limit high enough? `ulimit -l`)",
            ));
        }
        Ok(Self {
            mr,
            map: None,
            addr,
            len,
            iova: addr as u64,
            _pd: pd,
        })
    }

    /// Local key.
    pub fn lkey(&self) -> u32 {
        // SAFETY: mr is a live registration.
        unsafe { (*self.mr).lkey }
    }

    /// Remote key.
    pub fn rkey(&self) -> u32 {
        // SAFETY: mr is a live registration.
        unsafe { (*self.mr).rkey }
    }

    /// Start address, in this process.
    pub fn addr(&self) -> *mut u8 {
        self.addr
    }

    /// The address of the first byte for RDMA (what peers are told): 0 for a zero-based
    /// region, otherwise the virtual address.
    pub fn remote_addr(&self) -> u64 {
        self.iova
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: mr is a live registration; QPs that used it are destroyed before (they are
        // declared, and so dropped, before the regions in every owner).
        unsafe { ibv_dereg_mr(self.mr) };
    }
}
