//! The checks of `rdmabus doctor`, one file per group; [`run_checks`] makes them all.

mod access;
mod clock;
mod cpu;
pub mod devices;
mod iommu;
mod irq;
mod isolation;
mod memory;
mod numa;
mod ports;
pub mod report;
mod roce;
mod shm;
mod sys;

use devices::Device;
use report::{Report, Verdict};

/// The transport doctor checks the machine for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Want {
    /// Shared memory only: RDMA devices do not matter.
    Shm,
    /// RDMA verbs: a usable device is required.
    Verbs,
    /// Verbs where an RDMA device exists, shm otherwise.
    Auto,
}

impl Want {
    /// Its name on the command line and in the JSON document.
    pub fn name(self) -> &'static str {
        match self {
            Self::Shm => "shm",
            Self::Verbs => "verbs",
            Self::Auto => "auto",
        }
    }
}

/// What every check may need to know: the transport asked for, the devices, the CPUs.
pub struct Ctx {
    /// The transport asked for.
    pub want: Want,
    /// The RDMA devices (only the one asked for, with `--device`).
    pub devices: Vec<Device>,
    /// CPUs this process may run on.
    pub allowed: Vec<usize>,
    /// CPUs the kernel isolated (`/sys/devices/system/cpu/isolated`).
    pub isolated: Vec<usize>,
    /// Kernel command line parameters, when readable.
    pub cmdline: Option<Vec<String>>,
}

impl Ctx {
    /// Whether RDMA is in play: verbs asked for, or auto with a device present.
    pub fn uses_rdma(&self) -> bool {
        match self.want {
            Want::Verbs => true,
            Want::Auto => !self.devices.is_empty(),
            Want::Shm => false,
        }
    }

    /// The verdict of an RDMA finding for the transport asked for: as is over verbs; a
    /// failure is a warning for auto (shm still works); nothing to fix over shm.
    pub fn rdma(&self, v: Verdict) -> Verdict {
        match (self.want, v) {
            (Want::Verbs, v) => v,
            (Want::Auto, Verdict::Fail) if !self.devices.is_empty() => Verdict::Warn,
            (Want::Auto, v) if !self.devices.is_empty() => v,
            (_, Verdict::Ok) => Verdict::Ok,
            _ => Verdict::Info,
        }
    }

    /// The kernel command line parameter `key`, if given.
    pub fn param(&self, key: &str) -> Option<String> {
        sys::cmdline_param(self.cmdline.as_deref()?, key)
    }
}

/// Makes every check for transport `want` (and only device `device`, if given).
pub fn run_checks(want: Want, device: Option<&str>) -> Report {
    let mut r = Report::default();
    let mut devices = devices::scan();
    if let Some(name) = device {
        let all: Vec<String> = devices.iter().map(|d| d.name.clone()).collect();
        devices.retain(|d| d.name == name);
        if devices.is_empty() {
            r.add(
                "rdma.device",
                Verdict::Fail,
                &format!("RDMA device {name}"),
                &format!(
                    "not found; devices here: {}",
                    if all.is_empty() {
                        "none".into()
                    } else {
                        all.join(", ")
                    }
                ),
                Some("`rdma link` or `ibv_devices` lists them; drop --device to check them all"),
            );
        }
    }
    let ctx = Ctx {
        want,
        devices,
        allowed: rdmabus::affinity::allowed_cpus(),
        isolated: sys::read("/sys/devices/system/cpu/isolated")
            .and_then(|s| sys::cpu_list(&s))
            .unwrap_or_default(),
        cmdline: sys::cmdline(),
    };
    let rdma = ports::check(&ctx, &mut r, device.is_some());
    if rdma {
        roce::check(&ctx, &mut r);
        access::check(&ctx, &mut r);
    }
    memory::memlock(&ctx, &mut r);
    memory::hugepages(&mut r);
    memory::thp(&mut r);
    iommu::check(&ctx, &mut r);
    irq::irqbalance(&mut r);
    if rdma {
        irq::affinity(&ctx, &mut r);
        numa::check(&ctx, &mut r);
    }
    cpu::governor(&mut r);
    cpu::cstates(&ctx, &mut r);
    isolation::check(&ctx, &mut r);
    cpu::pinning(&ctx, &mut r);
    clock::check(&mut r);
    clock::check_stamps(&mut r);
    numa::placement(&ctx, &mut r);
    shm::check(&mut r);
    r
}
