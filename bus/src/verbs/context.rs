//! An open device context (rdma-sys), with the attributes of the port it uses and the device's
//! limits.

use super::os_error;
use crate::Error;
use rdma_sys::*;
use std::ffi::CStr;

/// An open RDMA device.
pub struct Context {
    pub(super) ctx: *mut ibv_context,
    /// LID of the port (0 on RoCE).
    pub lid: u16,
    /// Active MTU of the port.
    pub active_mtu: ibv_mtu::Type,
    /// What the device can hold (`ibv_query_device`).
    pub limits: DeviceLimits,
    /// The NUMA node the device reports (sysfs), if any.
    pub numa_node: Option<u32>,
}

/// The device limits a ring geometry must fit (from `ibv_query_device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Work requests one queue of a QP may hold.
    pub max_qp_wr: u32,
    /// Entries one completion queue may hold.
    pub max_cqe: u32,
    /// Bytes one memory region may span.
    pub max_mr_size: u64,
}

// SAFETY: libibverbs contexts may be used from any thread; we never alias the pointer mutably.
unsafe impl Send for Context {}
// SAFETY: as above; verbs calls on a context are thread-safe.
unsafe impl Sync for Context {}

impl Context {
    /// Opens the device called `name`, to use its port `port` (which must be active).
    pub fn open(name: &str, port: u8) -> Result<Self, Error> {
        let mut n = 0;
        // SAFETY: ibv_get_device_list returns an array of `n` device pointers (or null) that
        // stays valid until ibv_free_device_list, which we call before returning.
        let list = unsafe { ibv_get_device_list(&mut n) };
        if list.is_null() {
            return Err(os_error("ibv_get_device_list"));
        }
        let mut ctx = std::ptr::null_mut();
        for i in 0..n.max(0) as usize {
            // SAFETY: i < n, so the entry is a valid device pointer; its name is a C string.
            let dev = unsafe { *list.add(i) };
            // SAFETY: dev is valid (above); the name outlives this comparison.
            let dev_name = unsafe { CStr::from_ptr(ibv_get_device_name(dev)) };
            if dev_name.to_bytes() == name.as_bytes() {
                // SAFETY: dev is a valid device from the list, which is still alive.
                ctx = unsafe { ibv_open_device(dev) };
                break;
            }
        }
        // SAFETY: list came from ibv_get_device_list; opened contexts stay valid after it.
        unsafe { ibv_free_device_list(list) };
        if ctx.is_null() {
            return Err(Error::Config(format!("cannot open RDMA device {name:?}")));
        }
        // SAFETY: zeroed ibv_port_attr is a valid value to be filled in by the query.
        let mut attr: ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: ctx is an open context and attr a writable ibv_port_attr.
        let rc = unsafe { ___ibv_query_port(ctx, port, &mut attr) };
        // SAFETY: zeroed ibv_device_attr is a valid value to be filled in by the query.
        let mut dev: ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: ctx is an open context and dev a writable ibv_device_attr.
        let dev_rc = unsafe { ibv_query_device(ctx, &mut dev) };
        let this = Self {
            ctx,
            lid: attr.lid,
            active_mtu: attr.active_mtu,
            limits: DeviceLimits {
                max_qp_wr: dev.max_qp_wr.max(0) as u32,
                max_cqe: dev.max_cqe.max(0) as u32,
                max_mr_size: dev.max_mr_size,
            },
            numa_node: crate::numa::device_node(name),
        };
        if rc != 0 {
            return Err(super::errno_error("ibv_query_port", rc));
        }
        if dev_rc != 0 {
            return Err(super::errno_error("ibv_query_device", dev_rc));
        }
        if attr.state != ibv_port_state::IBV_PORT_ACTIVE {
            return Err(Error::Config(format!(
                "port {port} of RDMA device {name:?} is not active"
            )));
        }
        Ok(this)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: ctx was opened by ibv_open_device; every object made from it (PD, CQ, QP,
        // MR) holds an Arc to this context and is destroyed first.
        unsafe { ibv_close_device(self.ctx) };
    }
}
