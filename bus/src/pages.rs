//! Private memory for rings and staging: on 2 MiB pages when the hugetlb pool has them (fewer
//! TLB misses, and over verbs fewer pages for the NIC to translate), else on 4 KiB pages with
//! transparent huge pages advised. `RDMABUS_HUGEPAGES=off` keeps 4 KiB pages, `=require`
//! makes a missing pool an error; the default, `auto`, falls back and says so at info.

use crate::Error;
use memmap2::{MmapMut, MmapOptions};

/// The size of one huge page the bus asks for.
pub const HUGE_PAGE: usize = 2 << 20;

/// The pages a region got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pages {
    /// 2 MiB pages from the hugetlb pool (`MAP_HUGETLB`).
    Huge,
    /// 4 KiB pages (transparent huge pages advised, which the kernel may or may not use).
    Small,
}

impl std::fmt::Display for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Huge => "2 MiB pages",
            Self::Small => "4 KiB pages",
        })
    }
}

/// What `RDMABUS_HUGEPAGES` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Off,
    Auto,
    Require,
}

fn want() -> Result<Want, Error> {
    match std::env::var("RDMABUS_HUGEPAGES").ok().as_deref() {
        None | Some("") | Some("auto") => Ok(Want::Auto),
        Some("off") => Ok(Want::Off),
        Some("require") => Ok(Want::Require),
        Some(other) => Err(Error::Config(format!(
            "RDMABUS_HUGEPAGES={:?}: use auto, off or require",
            other.escape_debug().to_string()
        ))),
    }
}

/// Zeroed private memory of at least `len` bytes for `what` (a huge-page mapping is rounded
/// up to whole 2 MiB pages; `len()` of the mapping says how much there is), placed as
/// `placement` says if given (preferred, set before any page is touched: see
/// [`crate::numa`]).
pub fn alloc(
    len: usize,
    what: &str,
    placement: Option<crate::numa::Placement>,
) -> Result<(MmapMut, Pages), Error> {
    let (mut map, pages) = map(len, what)?;
    if let Some(placement) = placement {
        let len = map.len();
        crate::numa::place(map.as_mut_ptr(), len, placement, what)?;
    }
    Ok((map, pages))
}

fn map(len: usize, what: &str) -> Result<(MmapMut, Pages), Error> {
    let len = len.max(1);
    let want = want()?;
    if want != Want::Off {
        let rounded = len.div_ceil(HUGE_PAGE) * HUGE_PAGE;
        match MmapOptions::new()
            .len(rounded)
            .huge(Some(HUGE_PAGE.trailing_zeros() as u8))
            .map_anon()
        {
            Ok(map) => {
                tracing::debug!(what, bytes = rounded, "on 2 MiB pages");
                return Ok((map, Pages::Huge));
            }
            Err(e) if want == Want::Require => {
                return Err(Error::io(
                    format!(
                        "{what}: {rounded} bytes on 2 MiB pages (RDMABUS_HUGEPAGES=require; \
                         reserve some: sysctl vm.nr_hugepages)"
                    ),
                    e,
                ))
            }
            Err(e) => tracing::info!(
                what,
                error = %e,
                "no 2 MiB pages free (vm.nr_hugepages): using 4 KiB pages"
            ),
        }
    }
    let map = MmapMut::map_anon(len).map_err(|e| Error::io(format!("allocating {what}"), e))?;
    // Transparent huge pages where the kernel has them in `madvise` mode; failure is harmless.
    let _ = map.advise(memmap2::Advice::HugePage);
    Ok((map, Pages::Small))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_zeroed_writable_and_at_least_as_long_as_asked() {
        for len in [1, 4096, 100_000, HUGE_PAGE + 1] {
            let (mut map, pages) = alloc(len, "a test region", None).unwrap();
            assert!(map.len() >= len);
            if pages == Pages::Huge {
                assert_eq!(map.len() % HUGE_PAGE, 0);
            }
            assert!(map.iter().all(|&b| b == 0));
            map[len - 1] = 7;
            assert_eq!(map[len - 1], 7);
        }
    }
}
