//! Pinning a busy-polling thread to one CPU. A poller that migrates between cores loses its
//! warm caches and shares a core with whatever else runs there; pinned to an isolated core
//! (`isolcpus=`/`nohz_full=` on the kernel command line) it runs undisturbed.

use crate::Error;

/// Pins the calling thread to `cpu`. A CPU that does not exist, or that this thread may not
/// run on (cgroup cpuset, `taskset`), is a [`Error::Config`] naming the CPUs there are.
pub fn pin_current_thread(cpu: usize) -> Result<(), Error> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(Error::Config(not_a_cpu(cpu)));
    }
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu < CPU_SETSIZE, checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; set is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINVAL) {
            // The kernel's answer when the set holds no CPU we may use: say which we may.
            return Err(Error::Config(if cpu >= configured_cpus() {
                not_a_cpu(cpu)
            } else {
                format!(
                    "cannot pin to CPU {cpu}: it is offline or not allowed here (this thread may \
                     run on {}; the cgroup's cpuset or taskset decides)",
                    ranges(&allowed_cpus())
                )
            }));
        }
        return Err(Error::io(format!("pinning to CPU {cpu}"), e));
    }
    Ok(())
}

/// Checks, before anything is pinned, that `cpu` exists and this process may run on it (what
/// the CLI does for `--cpu` at start, so a bad number is refused before anything starts).
pub fn check_cpu(cpu: usize) -> Result<(), Error> {
    if cpu >= configured_cpus() || cpu >= libc::CPU_SETSIZE as usize {
        return Err(Error::Config(not_a_cpu(cpu)));
    }
    let allowed = allowed_cpus();
    if !allowed.is_empty() && !allowed.contains(&cpu) {
        return Err(Error::Config(format!(
            "CPU {cpu} is not one this process may run on ({}; the cgroup's cpuset or taskset \
             decides)",
            ranges(&allowed)
        )));
    }
    Ok(())
}

/// CPUs the machine has (configured, online or not).
pub fn configured_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    usize::try_from(n).unwrap_or(0).max(1)
}

fn not_a_cpu(cpu: usize) -> String {
    let n = configured_cpus();
    format!(
        "CPU {cpu} does not exist: this machine has {n} CPUs (0-{}); this process may run on {}",
        n - 1,
        ranges(&allowed_cpus())
    )
}

/// `[0, 1, 2, 5]` as `0-2,5`.
pub fn ranges(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    if out.is_empty() {
        "no CPU".into()
    } else {
        out.join(",")
    }
}

/// A kernel CPU or node list (`0-3,8,10-11`, `0-7:2`) as numbers, sorted and unique; flags such as isolcpus'
/// `domain,managed_irq,` are skipped. `None` when it does not parse.
pub fn parse_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        if !part.starts_with(|c: char| c.is_ascii_digit()) {
            continue; // a flag (isolcpus=nohz,domain,2-3) or "nohz_full=all"-like words
        }
        let (range, stride) = match part.split_once(':') {
            Some((r, s)) => (r, s.split('/').next()?.parse::<usize>().ok()?),
            None => (part, 1),
        };
        let (a, b) = match range.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let a = range.parse::<usize>().ok()?;
                (a, a)
            }
        };
        if b < a || b - a > 1 << 16 || stride == 0 {
            return None;
        }
        out.extend((a..=b).step_by(stride));
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: as above.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this process; set is writable and of the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Vec::new();
    }
    // SAFETY: i < CPU_SETSIZE for every i tested.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_list("0-3,8,10-11"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_list("domain,managed_irq,2-3"), Some(vec![2, 3]));
        assert_eq!(parse_list("0-7:2"), Some(vec![0, 2, 4, 6]));
        assert_eq!(parse_list(""), Some(vec![]));
        assert_eq!(parse_list("3-1"), None);
        assert_eq!(parse_list("1-x"), None);
    }

    #[test]
    fn a_cpu_that_does_not_exist_is_named_with_those_that_do() {
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(ranges(&[3]), "3");
        let e = check_cpu(100_000).unwrap_err().to_string();
        assert!(
            e.contains("CPU 100000 does not exist") && e.contains("CPUs"),
            "{e}"
        );
        let e = pin_current_thread(100_000).unwrap_err().to_string();
        assert!(e.contains("CPU 100000 does not exist"), "{e}");
        let n = configured_cpus();
        let e = std::thread::spawn(move || pin_current_thread(n + 1))
            .join()
            .unwrap();
        if n + 1 < libc::CPU_SETSIZE as usize {
            let e = e.unwrap_err().to_string();
            assert!(e.contains(&format!("this machine has {n} CPUs")), "{e}");
        }
        let first = allowed_cpus()[0];
        assert!(check_cpu(first).is_ok());
    }
}
