//! The subscriber's end of a verbs subscription: a registered ring the publisher writes into,
//! receives posted for the immediates, and RDMA writes of the consumed position back.

use super::context::Context;
use super::cq::{empty_wc, status_text, Cq};
use super::device::Choice;
use super::mr::Mr;
use super::pd::Pd;
use super::qp::{Qp, QpCaps, Sge, MAX_RECV_LIST};
use crate::transport::LocalRing;
use crate::Error;
use rdma_sys::{ibv_access_flags as A, ibv_wc, ibv_wc_opcode, ibv_wc_status};
use rdmabus_proto::credit_word::{self, CREDIT_WORD_LEN};
use rdmabus_proto::handshake::VerbsEndpoint;
use rdmabus_proto::RingGeometry;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Send queue depth for credit writes.
const SQ_DEPTH: u32 = 64;
/// One credit write in this many is signaled.
const SIGNAL_EVERY: u64 = 16;
/// Completion queue entries beyond one per slot.
pub(super) const CQ_SPARE: u32 = 16;
/// Longest wait for the send queue to take another credit write (the publisher's NIC
/// acknowledges within its retry budget, or the QP fails).
const CREDIT_WAIT: Duration = Duration::from_secs(2);
/// An idle subscriber writes back credit it has not yet returned at most this often (1 ms).
/// Credit goes back anyway at every quarter of the ring, so a full ring always gets it; this
/// only lets a publisher see a paused subscriber's last few slots free. Each one is an RDMA
/// write (a post, a packet and its ACK): at 50 µs, a ping-pong whose round trip is shorter
/// paid one per message or two, which on Soft-RoCE added microseconds to every message
/// (`bench pingpong --stages`, "idle credit"). Aeron's receivers, likewise, send status
/// messages at a quarter of the window or on a timer.
const IDLE_CREDIT_INTERVAL_NS: u64 = 1_000_000;

/// The subscriber's ring and completion queues over verbs.
pub struct VerbsLocalRing {
    // Field order is drop order: the QP goes before its CQs and memory regions.
    qp: Qp,
    recv_cq: Cq,
    send_cq: Cq,
    ring: Mr,
    credit_src: Mr,
    geometry: RingGeometry,
    credit_target: Option<(u64, u32)>,
    wc: [ibv_wc; 32],
    wc_len: usize,
    wc_pos: usize,
    send_wc: [ibv_wc; 8],
    /// Receives consumed and not yet posted again: posted as one list when
    /// [`MAX_RECV_LIST`] are held, and always before credit is written back (the publisher
    /// may then write up to the returned position plus a ring, and each write consumes a
    /// receive, so every receive for a slot released by that position must be posted).
    recv_held: [u64; MAX_RECV_LIST],
    recv_held_n: usize,
    sends_posted: u64,
    sends_done: u64,
    last_signaled: u64,
}

impl VerbsLocalRing {
    /// Opens the device, registers a ring of `geometry`, creates the QP and posts a receive
    /// for every slot.
    pub fn create(choice: &Choice, geometry: RingGeometry) -> Result<Self, Error> {
        let ctx = Arc::new(Context::open(&choice.device, choice.port)?);
        super::check_geometry(&choice.device, &ctx.limits, geometry)?;
        let pd = Pd::new(ctx.clone())?;
        let recv_cq = Cq::new(ctx.clone(), (geometry.slots() + CQ_SPARE) as i32)?;
        let send_cq = Cq::new(ctx, SQ_DEPTH as i32 + 16)?;
        let caps = QpCaps {
            send: SQ_DEPTH,
            recv: geometry.slots(),
            inline: 64,
        };
        let qp = Qp::new(pd.clone(), &send_cq, &recv_cq, caps, choice)?;
        // Zero-based: the publisher is told offsets into the ring, not our addresses.
        let ring = Mr::alloc_zero_based(
            pd.clone(),
            geometry.ring_bytes(),
            A::IBV_ACCESS_LOCAL_WRITE | A::IBV_ACCESS_REMOTE_WRITE,
        )?;
        let credit_src = Mr::alloc(
            pd,
            SQ_DEPTH as usize * CREDIT_WORD_LEN,
            A::IBV_ACCESS_LOCAL_WRITE,
        )?;
        Ok(Self {
            qp,
            recv_cq,
            send_cq,
            ring,
            credit_src,
            geometry,
            credit_target: None,
            wc: std::array::from_fn(|_| empty_wc()),
            wc_len: 0,
            wc_pos: 0,
            recv_held: [0; MAX_RECV_LIST],
            recv_held_n: 0,
            send_wc: std::array::from_fn(|_| empty_wc()),
            sends_posted: 0,
            sends_done: 0,
            last_signaled: 0,
        })
    }

    /// What to send the publisher in `Auth`: this QP and the ring, whose address is 0 (a
    /// zero-based registration: the publisher writes slot `i` at offset `i × slot_size`) unless
    /// the device refused one (then the ring's virtual address; see `Mr::alloc_zero_based`).
    pub fn endpoint(&self) -> VerbsEndpoint {
        self.qp.endpoint(
            self.ring.remote_addr(),
            self.ring.rkey(),
            self.ring.len() as u64,
        )
    }

    /// Connects to the publisher's QP, whose credit word `remote` names.
    pub fn connect(&mut self, remote: &VerbsEndpoint) -> Result<(), Error> {
        if remote.len < CREDIT_WORD_LEN as u64 {
            return Err(Error::Protocol(format!(
                "publisher's credit word is {} bytes, need {CREDIT_WORD_LEN}",
                remote.len
            )));
        }
        self.qp.connect(remote)?;
        // Receives can be posted once the QP left RESET; the publisher writes nothing before
        // our ready heartbeat, which follows.
        let slots = u64::from(self.geometry.slots());
        let mut ids = [0u64; MAX_RECV_LIST];
        for first in (0..slots).step_by(MAX_RECV_LIST) {
            let n = (slots - first).min(MAX_RECV_LIST as u64) as usize;
            for (k, id) in ids[..n].iter_mut().enumerate() {
                *id = first + k as u64;
            }
            self.qp.post_recvs(&ids[..n])?;
        }
        self.credit_target = Some((remote.addr, remote.rkey));
        Ok(())
    }

    /// Posts the receives held since the last list.
    fn post_held_recvs(&mut self) -> Result<(), Error> {
        let n = std::mem::take(&mut self.recv_held_n);
        self.qp.post_recvs(&self.recv_held[..n])
    }

    fn reap_sends(&mut self) -> Result<(), Error> {
        let n = self.send_cq.poll(&mut self.send_wc)?;
        for wc in &self.send_wc[..n] {
            if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
                return Err(Error::PublisherLost(format!(
                    "credit write failed: {}",
                    status_text(wc.status)
                )));
            }
            self.sends_done = self.sends_done.max(wc.wr_id + 1);
        }
        Ok(())
    }
}

impl LocalRing for VerbsLocalRing {
    fn idle_credit_interval_ns(&self) -> u64 {
        IDLE_CREDIT_INTERVAL_NS
    }

    #[inline]
    fn poll(&mut self) -> Result<Option<u32>, Error> {
        if self.wc_pos == self.wc_len {
            self.wc_len = self.recv_cq.poll(&mut self.wc)?;
            self.wc_pos = 0;
            if self.wc_len == 0 {
                return Ok(None);
            }
        }
        let wc = &self.wc[self.wc_pos];
        self.wc_pos += 1;
        if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
            return Err(Error::PublisherLost(format!(
                "RDMA receive failed: {}",
                status_text(wc.status)
            )));
        }
        if wc.opcode != ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM {
            return Err(Error::Corrupt {
                seq: None,
                reason: format!("unexpected completion opcode {}", wc.opcode),
            });
        }
        // SAFETY: for RECV_RDMA_WITH_IMM completions the union holds the immediate.
        let imm = u32::from_be(unsafe { wc.imm_data_invalidated_rkey_union.imm_data });
        self.recv_held[self.recv_held_n] = wc.wr_id;
        self.recv_held_n += 1;
        if self.recv_held_n == MAX_RECV_LIST {
            self.post_held_recvs()?;
        }
        Ok(Some(imm))
    }

    #[inline]
    fn slot_ptr(&self, index: u32) -> *const u8 {
        let offset = self.geometry.offset_of_index(index);
        // SAFETY: offset + slot_size lies inside the registered ring (sized from the geometry),
        // so the result stays inside that one mapping. No reference is made: the NIC writes
        // the slot whenever a peer holding the rkey says so.
        unsafe { self.ring.addr().add(offset).cast_const() }
    }

    #[inline]
    fn return_credit(&mut self, consumed: u64) -> Result<(), Error> {
        let Some((addr, rkey)) = self.credit_target else {
            return Ok(());
        };
        // Every receive the returned slots consumed is posted again first (see `recv_held`).
        self.post_held_recvs()?;
        let mut rounds = 0u32;
        let mut started = None;
        while self.sends_posted - self.sends_done >= SQ_DEPTH as u64 - 2 {
            if self.last_signaled <= self.sends_done {
                // Nothing signaled is pending: the next post must be.
                break;
            }
            self.reap_sends()?;
            rounds = rounds.wrapping_add(1);
            if rounds.is_multiple_of(1024) {
                let started = *started.get_or_insert_with(Instant::now);
                if started.elapsed() > CREDIT_WAIT {
                    return Err(Error::PublisherLost(format!(
                        "the publisher's NIC acknowledged no credit write for {CREDIT_WAIT:?}"
                    )));
                }
            }
        }
        let at = (self.sends_posted % SQ_DEPTH as u64) as usize * CREDIT_WORD_LEN;
        // SAFETY: `at + 16` lies inside credit_src (SQ_DEPTH words of 16 bytes); its previous
        // user is complete because fewer than SQ_DEPTH writes are in flight.
        let src = unsafe { self.credit_src.addr().add(at) };
        // Everything read from the slots being released happens before the publisher can see
        // the position (and reuse them): the post's doorbell follows this store.
        fence(Ordering::Release);
        // SAFETY: as above; 16-aligned because `at` is a multiple of 16 in a page-aligned
        // region that only this thread and (after the post) the NIC touch.
        unsafe { std::ptr::write(src as *mut [u64; 2], credit_word::encode(consumed)) };
        let inline = self.qp.max_inline() >= CREDIT_WORD_LEN as u32;
        let signaled = self.sends_posted % SIGNAL_EVERY == SIGNAL_EVERY - 1
            || self.sends_posted - self.sends_done >= SQ_DEPTH as u64 - 4;
        let sge = Sge {
            addr: src,
            len: CREDIT_WORD_LEN as u32,
            lkey: self.credit_src.lkey(),
        };
        self.qp.post_write(
            self.sends_posted,
            &[sge],
            addr,
            rkey,
            None,
            signaled,
            inline,
        )?;
        self.sends_posted += 1;
        if signaled {
            self.last_signaled = self.sends_posted;
        }
        self.reap_sends()
    }
}
