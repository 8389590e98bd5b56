//! The publisher's end of a verbs subscription: one RC QP per subscriber, RDMA WRITE_WITH_IMM
//! of header + payload into the subscriber's ring, and a registered credit word it writes into.

use super::context::Context;
use super::cq::{empty_wc, status_text, Cq};
use super::device::Choice;
use super::mr::Mr;
use super::pd::Pd;
use super::qp::{Qp, QpCaps, Sge, WriteWr, MAX_LIST};
use crate::stages::{stage, Stage};
use crate::transport::RemoteRing;
use crate::Error;
use rdma_sys::{ibv_access_flags as A, ibv_qp_state, ibv_wc, ibv_wc_status};
use rdmabus_proto::credit_word::{self, CREDIT_WORD_LEN};
use rdmabus_proto::handshake::VerbsEndpoint;
use rdmabus_proto::slot::HEADER_LEN;
use rdmabus_proto::{RingGeometry, SlotHeader};
use std::cell::Cell;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Send queue depth per subscriber.
const SQ_DEPTH: u32 = 256;
/// One send in this many is signaled.
const SIGNAL_EVERY: u64 = 32;
/// Inline data asked of the device.
const INLINE: u32 = 256;
/// Longest a write or a reclaim waits for this subscriber's QP to complete work (its NIC
/// acknowledges, or the QP fails when its retries run out, well within this).
pub const VERBS_WAIT: Duration = Duration::from_secs(2);
/// Longest the link's drop waits for posted writes before destroying the QP.
const DROP_FLUSH: Duration = Duration::from_millis(100);
/// Spins between two looks at the clock and the QP's state while waiting.
const CHECK_EVERY: u32 = 1024;

pub use crate::transport::Staging;

/// Writes into one subscriber's ring over RDMA.
pub struct VerbsRemoteRing {
    // Field order is drop order: the QP goes before its CQ and memory regions.
    qp: Qp,
    cq: Cq,
    headers: Mr,
    credit: Mr,
    staging_mr: Mr,
    staging: Staging,
    remote: VerbsEndpoint,
    geometry: RingGeometry,
    posted: u64,
    completed: u64,
    last_signaled: u64,
    slot_wr: Vec<u64>,
    wc: [ibv_wc; 16],
    /// Between `begin_batch` and `end_batch`: writes are held, then posted as one list.
    batching: bool,
    /// Writes held (counted in `posted`), and the headers of those sent inline.
    held: [WriteWr; MAX_LIST],
    held_headers: [[u8; HEADER_LEN]; MAX_LIST],
    held_n: usize,
    /// The last credit word that passed its check (a torn read keeps this one).
    last_consumed: Cell<u64>,
}

impl VerbsRemoteRing {
    /// Opens the device, registers the staging ring and a credit word, and creates a QP for
    /// the subscriber whose ring is `remote` (geometry `geometry`). Call `connect` next.
    pub fn new(
        choice: &Choice,
        staging: Staging,
        geometry: RingGeometry,
        remote: VerbsEndpoint,
    ) -> Result<Self, Error> {
        if remote.len != geometry.ring_bytes() as u64 {
            return Err(Error::Protocol(format!(
                "subscriber's ring is {} bytes, its geometry says {}",
                remote.len,
                geometry.ring_bytes()
            )));
        }
        let ctx = Arc::new(Context::open(&choice.device, choice.port)?);
        let pd = Pd::new(ctx.clone())?;
        let cq = Cq::new(ctx, SQ_DEPTH as i32 + 16)?;
        let qp = Qp::new(
            pd.clone(),
            &cq,
            &cq,
            QpCaps {
                send: SQ_DEPTH,
                recv: 1,
                inline: INLINE,
            },
            choice,
        )?;
        let headers = Mr::alloc(
            pd.clone(),
            SQ_DEPTH as usize * HEADER_LEN,
            A::IBV_ACCESS_LOCAL_WRITE,
        )?;
        // Zero-based: the subscriber is told offset 0, not our address.
        let credit = Mr::alloc_zero_based(
            pd.clone(),
            64,
            A::IBV_ACCESS_LOCAL_WRITE | A::IBV_ACCESS_REMOTE_WRITE,
        )?;
        // SAFETY: the region is 64 page-aligned bytes we own; no peer is connected yet.
        unsafe { std::ptr::write_volatile(credit.addr() as *mut [u64; 2], credit_word::encode(0)) };
        // SAFETY: the staging ring belongs to the Publisher, which owns this link and drops its
        // links before its staging memory (field order), so the memory outlives the Mr.
        let staging_mr = unsafe {
            Mr::register(
                pd,
                staging.addr as *mut u8,
                staging.len,
                A::IBV_ACCESS_LOCAL_WRITE,
            )?
        };
        let slots = staging.len / staging.slot_size.max(1);
        Ok(Self {
            qp,
            cq,
            headers,
            credit,
            staging_mr,
            staging,
            remote,
            geometry,
            posted: 0,
            completed: 0,
            last_signaled: 0,
            slot_wr: vec![0; slots],
            wc: std::array::from_fn(|_| empty_wc()),
            batching: false,
            held: [WriteWr::EMPTY; MAX_LIST],
            held_headers: [[0; HEADER_LEN]; MAX_LIST],
            held_n: 0,
            last_consumed: Cell::new(0),
        })
    }

    /// What to send the subscriber in `Welcome`: this QP and the credit word, at address 0 (a
    /// zero-based registration) unless the device refused one (then its virtual address).
    /// The staging ring is never announced: only this side's work requests name it.
    pub fn endpoint(&self) -> VerbsEndpoint {
        self.qp.endpoint(
            self.credit.remote_addr(),
            self.credit.rkey(),
            CREDIT_WORD_LEN as u64,
        )
    }

    /// Connects the QP to the subscriber's.
    pub fn connect(&mut self) -> Result<(), Error> {
        let remote = self.remote;
        self.qp.connect(&remote)
    }

    fn reap(&mut self) -> Result<(), Error> {
        let n = self.cq.poll(&mut self.wc)?;
        for wc in &self.wc[..n] {
            if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
                return Err(Error::Protocol(format!(
                    "RDMA write to the subscriber failed: {} (vendor error {:#x})",
                    status_text(wc.status),
                    wc.vendor_err
                )));
            }
            self.completed = self.completed.max(wc.wr_id + 1);
        }
        Ok(())
    }

    fn signaled_post(&mut self) -> Result<(), Error> {
        // After what is held, so that its completion covers them.
        self.post_held()?;
        // A zero-length write, signaled, so that everything before it reports completion.
        let wr = self.posted;
        self.qp.post_write(
            wr,
            &[],
            self.remote.addr,
            self.remote.rkey,
            None,
            true,
            false,
        )?;
        self.posted += 1;
        self.last_signaled = self.posted;
        Ok(())
    }

    /// Waits until every work request up to `needed` has completed: reaping, posting a
    /// signaled write when nothing signaled covers it, and every [`CHECK_EVERY`] rounds
    /// looking at the QP's state and the clock. Fails if the QP left RTS or `deadline`
    /// passed, so no subscriber can hold its publisher here for longer.
    fn wait_completed(&mut self, needed: u64, deadline: Instant, what: &str) -> Result<(), Error> {
        // Held writes complete only once posted.
        self.post_held()?;
        let mut rounds = 0u32;
        while self.completed < needed {
            if self.last_signaled < needed && self.posted - self.completed < SQ_DEPTH as u64 {
                self.signaled_post()?;
            }
            self.reap()?;
            rounds = rounds.wrapping_add(1);
            if rounds.is_multiple_of(CHECK_EVERY) && self.completed < needed {
                self.health()?;
                if Instant::now() >= deadline {
                    return Err(Error::Timeout(format!(
                        "{what}: the subscriber's QP completed {} of {needed} work requests \
                         in time",
                        self.completed
                    )));
                }
                std::hint::spin_loop();
            }
        }
        Ok(())
    }

    /// Fails unless the QP is still ready to send.
    pub fn health(&self) -> Result<(), Error> {
        match self.qp.state()? {
            ibv_qp_state::IBV_QPS_RTS => Ok(()),
            s => Err(Error::Protocol(format!(
                "the subscriber's QP is in state {s}, not RTS"
            ))),
        }
    }
}

impl RemoteRing for VerbsRemoteRing {
    #[inline]
    fn write(
        &mut self,
        pos: u64,
        header: &SlotHeader,
        payload: &[u8],
        imm: u32,
    ) -> Result<(), Error> {
        if self.posted - self.completed >= SQ_DEPTH as u64 - 2 {
            // The publisher asks `has_room` first, so this is a safety net, bounded.
            let needed = self.posted + 3 - SQ_DEPTH as u64;
            self.wait_completed(needed, Instant::now() + VERBS_WAIT, "send queue full")?;
        }
        let total = HEADER_LEN + payload.len();
        let inline = total as u32 <= self.qp.max_inline();
        let header_bytes = header.to_bytes();
        let held = self.held_n;
        let header_sge = if inline {
            // Inline data is copied when posted: held writes keep it here until then (its
            // address is set when the list is posted), a write posted now reads the stack.
            let at = if self.batching {
                self.held_headers[held] = header_bytes;
                self.held_headers[held].as_ptr()
            } else {
                header_bytes.as_ptr()
            };
            Sge {
                addr: at,
                len: HEADER_LEN as u32,
                lkey: 0,
            }
        } else {
            let at = (self.posted % SQ_DEPTH as u64) as usize * HEADER_LEN;
            // SAFETY: `at + HEADER_LEN` lies in the headers region (SQ_DEPTH entries).
            let dst = unsafe { self.headers.addr().add(at) };
            // SAFETY: dst is in bounds (above); the WR that last used this entry is complete,
            // since fewer than SQ_DEPTH are in flight, so nothing reads it now.
            unsafe { std::ptr::copy_nonoverlapping(header_bytes.as_ptr(), dst, HEADER_LEN) };
            Sge {
                addr: dst,
                len: HEADER_LEN as u32,
                lkey: self.headers.lkey(),
            }
        };
        let payload_sge = Sge {
            addr: payload.as_ptr(),
            len: payload.len() as u32,
            lkey: self.staging_mr.lkey(),
        };
        let signaled = self.posted % SIGNAL_EVERY == SIGNAL_EVERY - 1;
        let remote_addr = self
            .remote
            .addr
            .wrapping_add(self.geometry.offset(pos) as u64);
        let wr = WriteWr {
            wr_id: self.posted,
            sges: [header_sge, payload_sge],
            num_sge: if payload.is_empty() { 1 } else { 2 },
            remote_addr,
            rkey: self.remote.rkey,
            imm: Some(imm),
            signaled,
            inline,
        };
        if self.batching {
            self.held[held] = wr;
            self.held_n += 1;
        } else {
            self.qp.post_writes(std::slice::from_ref(&wr))?;
        }
        if !inline {
            let slot = (payload.as_ptr() as usize - self.staging.addr) / self.staging.slot_size;
            self.slot_wr[slot] = self.posted + 1;
        }
        self.posted += 1;
        if self.held_n == MAX_LIST {
            self.post_held()?;
        }
        if signaled {
            self.last_signaled = self.posted;
            stage!(Stage::Reap, self.reap())?;
        }
        Ok(())
    }

    fn begin_batch(&mut self) {
        self.batching = true;
    }

    #[inline]
    fn post_held(&mut self) -> Result<(), Error> {
        let n = self.held_n;
        if n == 0 {
            return Ok(());
        }
        self.held_n = 0;
        for (wr, header) in self.held[..n].iter_mut().zip(&self.held_headers) {
            if wr.inline {
                // Its header was kept in `held_headers` (see `write`): point at it as it is now.
                wr.sges[0].addr = header.as_ptr();
            }
        }
        self.qp.post_writes(&self.held[..n])
    }

    fn end_batch(&mut self) -> Result<(), Error> {
        self.batching = false;
        self.post_held()
    }

    fn bounded_queue(&self) -> bool {
        true
    }

    #[inline]
    fn has_room(&mut self) -> Result<bool, Error> {
        if self.posted - self.completed < SQ_DEPTH as u64 - 2 {
            return Ok(true);
        }
        // Full: make sure something signaled is in flight (there is room for it), then reap.
        if self.last_signaled <= self.completed {
            self.signaled_post()?;
        }
        self.reap()?;
        Ok(self.posted - self.completed < SQ_DEPTH as u64 - 2)
    }

    #[inline]
    fn consumed(&self) -> u64 {
        let at = self.credit.addr() as *const u64;
        // SAFETY: the credit region is 64 bytes, page-aligned, alive as long as self; the
        // subscriber's NIC may be writing it right now, so it is read with volatile loads and
        // never through a reference; a torn pair fails its check below.
        let words = unsafe {
            [
                std::ptr::read_volatile(at),
                std::ptr::read_volatile(at.add(1)),
            ]
        };
        // The subscriber's reads of the slots it released happened before its write; ours of
        // the position happen before we reuse them.
        fence(Ordering::Acquire);
        if let Some(v) = credit_word::decode(words) {
            self.last_consumed.set(v);
        }
        self.last_consumed.get()
    }

    fn reclaim(&mut self, staging_slot: u32) -> Result<(), Error> {
        let Some(&needed) = self.slot_wr.get(staging_slot as usize) else {
            return Ok(());
        };
        if self.completed >= needed {
            return Ok(());
        }
        self.wait_completed(needed, Instant::now() + VERBS_WAIT, "staging slot in use")
    }

    fn flush(&mut self, deadline: Instant) -> Result<(), Error> {
        let needed = self.posted;
        self.wait_completed(needed, deadline, "flushing the send queue")
    }
}

impl Drop for VerbsRemoteRing {
    fn drop(&mut self) {
        // Let writes in flight land before the QP goes (a NIC executes them asynchronously);
        // bounded, and quiet: a link that failed has nothing more to deliver.
        if self.posted > self.completed {
            let _ = self.flush(Instant::now() + DROP_FLUSH);
        }
    }
}
