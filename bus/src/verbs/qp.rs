//! A reliable-connected queue pair: creation, connection (INIT → RTR → RTS), and the posts
//! the bus uses (RDMA WRITE with or without immediate, zero-length receives).

use super::cq::Cq;
use super::device::Choice;
use super::pd::Pd;
use super::{errno_error, mtu_bytes, mtu_enum, random_psn};
use crate::Error;
use rdma_sys::*;
use rdmabus_proto::handshake::VerbsEndpoint;
use std::mem::MaybeUninit;
use std::sync::Arc;

use crate::verbs_options::VerbsOptions;

/// Sizes asked for at creation.
#[derive(Clone, Copy, Debug)]
pub struct QpCaps {
    /// Send queue depth.
    pub send: u32,
    /// Receive queue depth.
    pub recv: u32,
    /// Inline data wanted (the device may grant less; see `Qp::max_inline`).
    pub inline: u32,
}

/// An RC queue pair.
pub struct Qp {
    qp: *mut ibv_qp,
    psn: u32,
    max_inline: u32,
    device: String,
    port: u8,
    gid_index: u8,
    gid_type: u32,
    gid: [u8; 16],
    options: VerbsOptions,
    pd: Arc<Pd>,
}

// SAFETY: QPs are thread-safe verbs objects; each Qp is driven by one owner at a time.
unsafe impl Send for Qp {}

/// One scatter/gather element.
#[derive(Clone, Copy)]
pub struct Sge {
    /// Address.
    pub addr: *const u8,
    /// Length in bytes.
    pub len: u32,
    /// Local key of the region holding it (ignored for inline sends).
    pub lkey: u32,
}

// SAFETY: an Sge is an address handed to the device in a work request; Rust code never reads
// or writes through it, so moving one to another thread shares nothing.
unsafe impl Send for Sge {}

impl Sge {
    /// No data.
    pub const EMPTY: Sge = Sge {
        addr: std::ptr::null(),
        len: 0,
        lkey: 0,
    };
}

/// Work requests posted with one `ibv_post_send` (one doorbell) at most.
pub const MAX_LIST: usize = 32;

/// One RDMA WRITE (with immediate if `imm` is given), by value, so that several can be kept
/// and posted as one list.
#[derive(Clone, Copy)]
pub struct WriteWr {
    /// Its work request id.
    pub wr_id: u64,
    /// Its scatter/gather list (the first `num_sge`).
    pub sges: [Sge; 2],
    /// How many of `sges` it uses.
    pub num_sge: u8,
    /// Where it writes.
    pub remote_addr: u64,
    /// The remote region's key.
    pub rkey: u32,
    /// The immediate, for WRITE_WITH_IMM.
    pub imm: Option<u32>,
    /// Whether it reports a completion.
    pub signaled: bool,
    /// Whether its data is copied at post time (within `max_inline`).
    pub inline: bool,
}

impl WriteWr {
    /// A write of nothing, to fill arrays with before real ones are put in.
    pub const EMPTY: WriteWr = WriteWr {
        wr_id: 0,
        sges: [Sge::EMPTY; 2],
        num_sge: 0,
        remote_addr: 0,
        rkey: 0,
        imm: None,
        signaled: false,
        inline: false,
    };
}

impl Qp {
    /// Creates an RC QP on `pd` whose sends complete on `send_cq` and receives on `recv_cq`.
    pub fn new(
        pd: Arc<Pd>,
        send_cq: &Cq,
        recv_cq: &Cq,
        caps: QpCaps,
        choice: &Choice,
    ) -> Result<Self, Error> {
        // SAFETY: zeroed init attributes are valid; we fill the fields we use.
        let mut attr: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        attr.send_cq = send_cq.cq;
        attr.recv_cq = recv_cq.cq;
        attr.qp_type = ibv_qp_type::IBV_QPT_RC;
        attr.cap = ibv_qp_cap {
            max_send_wr: caps.send,
            max_recv_wr: caps.recv,
            max_send_sge: 2,
            max_recv_sge: 1,
            max_inline_data: caps.inline,
        };
        // SAFETY: pd and cq are live; attr is fully initialised.
        let mut qp = unsafe { ibv_create_qp(pd.pd, &mut attr) };
        if qp.is_null() && caps.inline > 0 {
            // Some devices refuse large inline sizes: retry without inline data, and if that
            // fails too, report the first refusal (the real cause) as well as the second.
            let first = std::io::Error::last_os_error();
            attr.cap.max_inline_data = 0;
            // SAFETY: as above.
            qp = unsafe { ibv_create_qp(pd.pd, &mut attr) };
            if qp.is_null() {
                let second = std::io::Error::last_os_error();
                return Err(Error::io(
                    format!(
                        "verbs: ibv_create_qp (send {} / receive {} work requests, inline {} \
                         bytes) failed with {first}; without inline data it failed with",
                        caps.send, caps.recv, caps.inline
                    ),
                    second,
                ));
            }
            tracing::debug!(inline = caps.inline, error = %first, "verbs: inline data refused; QP created without it");
        }
        if qp.is_null() {
            return Err(Error::io(
                format!(
                    "verbs: ibv_create_qp (send {} / receive {} work requests)",
                    caps.send, caps.recv
                ),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Self {
            qp,
            psn: random_psn(),
            max_inline: attr.cap.max_inline_data,
            device: choice.device.clone(),
            port: choice.port,
            gid_index: choice.gid_index,
            gid_type: choice.gid_type,
            gid: choice.gid,
            options: choice.options,
            pd,
        })
    }

    /// The QP's current state (`ibv_query_qp`; a system call on most providers, so only for
    /// waits, never per message).
    pub fn state(&self) -> Result<ibv_qp_state::Type, Error> {
        // SAFETY: zeroed attributes are valid values for the query to fill in.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        // SAFETY: qp is live; attr and init are writable.
        let rc = unsafe {
            ibv_query_qp(
                self.qp,
                &mut attr,
                ibv_qp_attr_mask::IBV_QP_STATE.0 as i32,
                &mut init,
            )
        };
        if rc != 0 {
            return Err(errno_error("ibv_query_qp", rc));
        }
        Ok(attr.qp_state)
    }

    /// Largest payload that can be sent inline.
    pub fn max_inline(&self) -> u32 {
        self.max_inline
    }

    /// What the peer needs to connect to this QP, with `addr`/`rkey`/`len` of our remotely
    /// writable memory.
    pub fn endpoint(&self, addr: u64, rkey: u32, len: u64) -> VerbsEndpoint {
        VerbsEndpoint {
            // SAFETY: qp is live.
            qpn: unsafe { (*self.qp).qp_num },
            psn: self.psn,
            gid: self.gid,
            lid: self.pd.ctx.lid,
            mtu: self
                .options
                .mtu
                .map_or(mtu_bytes(self.pd.ctx.active_mtu), |cap| {
                    cap.min(mtu_bytes(self.pd.ctx.active_mtu))
                }),
            addr,
            rkey,
            len,
        }
    }

    fn modify(
        &mut self,
        attr: &mut ibv_qp_attr,
        mask: ibv_qp_attr_mask,
        what: &str,
    ) -> Result<(), Error> {
        // SAFETY: qp is live and attr initialised for the fields named in mask.
        let rc = unsafe { ibv_modify_qp(self.qp, attr, mask.0 as i32) };
        if rc != 0 {
            return Err(errno_error(what, rc));
        }
        Ok(())
    }

    /// Connects to `remote`: INIT (remote writes allowed), RTR, RTS.
    pub fn connect(&mut self, remote: &VerbsEndpoint) -> Result<(), Error> {
        use ibv_qp_attr_mask as M;
        // SAFETY: zeroed attributes are valid; each step sets what its mask names.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = self.port;
        a.qp_access_flags = (ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE)
            .0;
        self.modify(
            &mut a,
            M::IBV_QP_STATE | M::IBV_QP_PKEY_INDEX | M::IBV_QP_PORT | M::IBV_QP_ACCESS_FLAGS,
            "QP to INIT",
        )?;

        // SAFETY: as above.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_RTR;
        let mut mtu = remote.mtu.min(mtu_bytes(self.pd.ctx.active_mtu));
        if let Some(cap) = self.options.mtu {
            mtu = mtu.min(cap);
        }
        a.path_mtu = mtu_enum(mtu);
        a.dest_qp_num = remote.qpn;
        a.rq_psn = remote.psn;
        a.max_dest_rd_atomic = 1;
        a.min_rnr_timer = 12;
        a.ah_attr.is_global = 1;
        a.ah_attr.dlid = remote.lid;
        a.ah_attr.port_num = self.port;
        a.ah_attr.sl = self.options.service_level;
        a.ah_attr.grh.dgid = ibv_gid { raw: remote.gid };
        a.ah_attr.grh.sgid_index = self.gid_index;
        a.ah_attr.grh.hop_limit = 64;
        a.ah_attr.grh.traffic_class = self.options.traffic_class;
        self.modify(
            &mut a,
            M::IBV_QP_STATE
                | M::IBV_QP_AV
                | M::IBV_QP_PATH_MTU
                | M::IBV_QP_DEST_QPN
                | M::IBV_QP_RQ_PSN
                | M::IBV_QP_MAX_DEST_RD_ATOMIC
                | M::IBV_QP_MIN_RNR_TIMER,
            "QP to RTR",
        )?;

        // SAFETY: as above.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_RTS;
        a.sq_psn = self.psn;
        // Finite retries (7 would mean forever): a peer that stops acknowledging or stops
        // posting receives fails this QP's work requests with RETRY_EXC / RNR_RETRY_EXC
        // instead of holding its sender (`VerbsOptions::check` refuses 7). The default timeout
        // 14 is 4.096 µs × 2^14 ≈ 67 ms per transport retry.
        a.timeout = self.options.timeout;
        a.retry_cnt = self.options.retry_count;
        a.rnr_retry = self.options.rnr_retry;
        a.max_rd_atomic = 1;
        self.modify(
            &mut a,
            M::IBV_QP_STATE
                | M::IBV_QP_SQ_PSN
                | M::IBV_QP_TIMEOUT
                | M::IBV_QP_RETRY_CNT
                | M::IBV_QP_RNR_RETRY
                | M::IBV_QP_MAX_QP_RD_ATOMIC,
            "QP to RTS",
        )?;
        tracing::info!(
            device = %self.device,
            port = self.port,
            gid_index = self.gid_index,
            gid_type = gid_type_name(self.gid_type),
            gid = %super::device::format_gid(&self.gid),
            path_mtu = mtu,
            max_inline = self.max_inline,
            // SAFETY: qp is live.
            qpn = unsafe { (*self.qp).qp_num },
            remote_qpn = remote.qpn,
            traffic_class = self.options.traffic_class,
            service_level = self.options.service_level,
            timeout = self.options.timeout,
            retry_count = self.options.retry_count,
            rnr_retry = self.options.rnr_retry,
            "verbs: connected"
        );
        Ok(())
    }

    /// Posts one RDMA WRITE (with immediate if `imm` is given) of `sges` to `remote_addr`.
    /// `inline` copies the data at post time (total length must be within `max_inline`).
    /// Never allocates.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn post_write(
        &mut self,
        wr_id: u64,
        sges: &[Sge],
        remote_addr: u64,
        rkey: u32,
        imm: Option<u32>,
        signaled: bool,
        inline: bool,
    ) -> Result<(), Error> {
        let n = sges.len().min(2);
        let mut wr = WriteWr {
            wr_id,
            num_sge: n as u8,
            remote_addr,
            rkey,
            imm,
            signaled,
            inline,
            ..WriteWr::EMPTY
        };
        wr.sges[..n].copy_from_slice(&sges[..n]);
        self.post_writes(std::slice::from_ref(&wr))
    }

    /// Posts `wrs` in order as chained lists of at most [`MAX_LIST`] work requests: one
    /// `ibv_post_send` (one doorbell) per list. Never allocates. On an error, the work
    /// requests before the failed one are posted.
    #[inline]
    pub fn post_writes(&mut self, wrs: &[WriteWr]) -> Result<(), Error> {
        for chunk in wrs.chunks(MAX_LIST) {
            self.post_list(chunk)?;
        }
        Ok(())
    }

    #[inline]
    fn post_list(&mut self, wrs: &[WriteWr]) -> Result<(), Error> {
        let n = wrs.len();
        if n == 0 {
            return Ok(());
        }
        // Only the `n` entries used are initialized (a zeroed list of MAX_LIST would cost
        // more than the post itself for one write).
        let mut sges = [const { MaybeUninit::<[ibv_sge; 2]>::uninit() }; MAX_LIST];
        let mut list = [const { MaybeUninit::<ibv_send_wr>::uninit() }; MAX_LIST];
        let sges_at = sges.as_mut_ptr() as *mut [ibv_sge; 2];
        let list_at = list.as_mut_ptr() as *mut ibv_send_wr;
        for (i, w) in wrs.iter().enumerate() {
            let sg = w.sges.map(|s| ibv_sge {
                addr: s.addr as u64,
                length: s.len,
                lkey: s.lkey,
            });
            sges[i].write(sg);
            // SAFETY: zeroed send WR is valid; we set every field the opcode uses.
            let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
            wr.wr_id = w.wr_id;
            // SAFETY: i < n <= MAX_LIST: in bounds of `sges`, whose entry i is written above.
            wr.sg_list = unsafe { (*sges_at.add(i)).as_mut_ptr() };
            wr.num_sge = w.num_sge.min(2) as i32;
            wr.next = if i + 1 < n {
                // SAFETY: i + 1 < n <= MAX_LIST: in bounds; written in the next iteration.
                unsafe { list_at.add(i + 1) }
            } else {
                std::ptr::null_mut()
            };
            let mut flags = 0;
            if w.signaled {
                flags |= ibv_send_flags::IBV_SEND_SIGNALED.0;
            }
            if w.inline {
                flags |= ibv_send_flags::IBV_SEND_INLINE.0;
            }
            wr.send_flags = flags;
            match w.imm {
                Some(v) => {
                    wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM;
                    wr.imm_data_invalidated_rkey_union.imm_data = v.to_be();
                }
                None => wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE,
            }
            wr.wr.rdma = rdma_t {
                remote_addr: w.remote_addr,
                rkey: w.rkey,
            };
            list[i].write(wr);
        }
        let mut bad = std::ptr::null_mut();
        // SAFETY: qp is live; entries 0..n of `list` and `sges` are initialized (above), chained
        // through `next`, and live across the call; for non-inline sends the caller keeps the
        // referenced memory registered and unchanged until completion, and inline data is
        // copied by the call.
        let rc = unsafe { ibv_post_send(self.qp, list_at, &mut bad) };
        if rc != 0 {
            return Err(errno_error("ibv_post_send", rc));
        }
        Ok(())
    }

    /// Posts one zero-length receive (each consumed by one incoming WRITE_WITH_IMM) per id, as
    /// one chained list (one call, one lock in the provider). At most [`MAX_RECV_LIST`] ids.
    /// Never allocates.
    #[inline]
    pub fn post_recvs(&mut self, wr_ids: &[u64]) -> Result<(), Error> {
        let n = wr_ids.len().min(MAX_RECV_LIST);
        if n == 0 {
            return Ok(());
        }
        let mut wrs = [ibv_recv_wr {
            wr_id: 0,
            next: std::ptr::null_mut(),
            sg_list: std::ptr::null_mut(),
            num_sge: 0,
        }; MAX_RECV_LIST];
        for i in 0..n {
            wrs[i].wr_id = wr_ids[i];
        }
        let base = wrs.as_mut_ptr();
        for i in 0..n - 1 {
            // SAFETY: i + 1 < n <= MAX_RECV_LIST: both are elements of `wrs`, which outlives
            // the post below.
            unsafe { (*base.add(i)).next = base.add(i + 1) };
        }
        let mut bad = std::ptr::null_mut();
        // SAFETY: qp is live; the list is `n` linked receives with no scatter entries, on our
        // stack until the call returns (the provider copies work requests when posted).
        let rc = unsafe { ibv_post_recv(self.qp, base, &mut bad) };
        if rc != 0 {
            return Err(errno_error("ibv_post_recv", rc));
        }
        Ok(())
    }
}

/// Longest chain [`Qp::post_recvs`] posts at once.
pub const MAX_RECV_LIST: usize = 16;

impl Drop for Qp {
    fn drop(&mut self) {
        // SAFETY: qp is live; owners drop the QP before its CQ and memory regions.
        unsafe { ibv_destroy_qp(self.qp) };
    }
}

/// The name of a GID type (`ibv_gid_type`).
fn gid_type_name(t: u32) -> &'static str {
    match t {
        0 => "IB",
        1 => "RoCE v1",
        2 => "RoCE v2",
        _ => "unknown",
    }
}
