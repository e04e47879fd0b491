//! Per-CPU perf rings for the datapath's `PSC_EVENTS` perf event array, opened and read by hand.
//!
//! aya's reader opens the rings with `wakeup_events = 1`, which makes the kernel queue an IRQ-work
//! wakeup for every single sample (a self-IPI; in a VM an exit). Our readers never sleep in
//! `poll()` — they drain the ring and sleep when it is empty — so the rings are opened with a
//! watermark wakeup at half the ring instead: the per-sample cost is just the copy.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{Ordering, fence};

/// `PERF_TYPE_SOFTWARE`.
const PERF_TYPE_SOFTWARE: u32 = 1;
/// `PERF_COUNT_SW_BPF_OUTPUT`.
const PERF_COUNT_SW_BPF_OUTPUT: u64 = 10;
/// `PERF_SAMPLE_RAW`.
const PERF_SAMPLE_RAW: u64 = 1 << 10;
/// `attr.watermark` bit of the flags word.
const ATTR_FLAG_WATERMARK: u64 = 1 << 14;
/// `PERF_FLAG_FD_CLOEXEC`.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// `PERF_EVENT_IOC_ENABLE`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
/// `PERF_RECORD_LOST`.
const PERF_RECORD_LOST: u32 = 2;
/// `PERF_RECORD_SAMPLE`.
const PERF_RECORD_SAMPLE: u32 = 9;
/// Offset of `data_head` in `struct perf_event_mmap_page`.
const DATA_HEAD_OFFSET: usize = 1024;
/// Offset of `data_tail`.
const DATA_TAIL_OFFSET: usize = 1032;

/// `struct perf_event_attr` up to `config1` (PERF_ATTR_SIZE_VER0, 64 bytes).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_watermark: u32,
    bp_type: u32,
    config1: u64,
}
const _: () = assert!(std::mem::size_of::<PerfEventAttr>() == 64);

/// What one read of a ring produced.
#[derive(Debug, Default)]
pub struct ReadResult {
    /// Samples copied out.
    pub samples: usize,
    /// Samples the kernel reported lost since the last read.
    pub lost: u64,
}

/// One CPU's perf ring, registered in a perf event array.
pub struct PerfRing {
    fd: OwnedFd,
    base: *mut u8,
    mmap_len: usize,
    data_len: usize,
    page: usize,
}

// SAFETY: the mapping is owned by this struct and only accessed through &mut self.
unsafe impl Send for PerfRing {}

impl PerfRing {
    /// Opens a ring of `pages` data pages (a power of two) on `cpu` and stores it at index `cpu`
    /// of the perf event array `map_fd`.
    pub fn open(map_fd: RawFd, cpu: u32, pages: usize) -> io::Result<Self> {
        if !pages.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "perf ring pages must be a power of two",
            ));
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let data_len = pages * page;
        let attr = PerfEventAttr {
            type_: PERF_TYPE_SOFTWARE,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: PERF_COUNT_SW_BPF_OUTPUT,
            sample_period: 1,
            sample_type: PERF_SAMPLE_RAW,
            flags: ATTR_FLAG_WATERMARK,
            wakeup_watermark: (data_len / 2) as u32,
            ..Default::default()
        };
        // SAFETY: perf_event_open with a valid attr pointer; pid -1 + cpu = all tasks on cpu.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                -1,
                cpu as i32,
                -1,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a new fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let mmap_len = page + data_len;
        // SAFETY: mapping the perf fd as documented (1 + 2^n pages, shared, read-write to update
        // data_tail).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mmap_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ring = PerfRing {
            fd,
            base: base.cast(),
            mmap_len,
            data_len,
            page,
        };
        // SAFETY: ioctl on our perf fd.
        if unsafe { libc::ioctl(ring.fd.as_raw_fd(), PERF_EVENT_IOC_ENABLE as _, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        map_update_fd(map_fd, cpu, ring.fd.as_raw_fd())?;
        Ok(ring)
    }

    /// Whether samples are waiting.
    pub fn readable(&self) -> bool {
        let (head, tail) = self.positions();
        head != tail
    }

    fn positions(&self) -> (u64, u64) {
        // SAFETY: both fields are in the first (metadata) page of our mapping.
        unsafe {
            let head = std::ptr::read_volatile(self.base.add(DATA_HEAD_OFFSET) as *const u64);
            fence(Ordering::Acquire);
            let tail = std::ptr::read_volatile(self.base.add(DATA_TAIL_OFFSET) as *const u64);
            (head, tail)
        }
    }

    fn copy_out(&self, pos: u64, out: &mut [u8]) {
        let data = unsafe { self.base.add(self.page) };
        let start = (pos as usize) & (self.data_len - 1);
        let first = out.len().min(self.data_len - start);
        // SAFETY: both ranges are inside the data area of our mapping (wrap handled).
        unsafe {
            std::ptr::copy_nonoverlapping(data.add(start), out.as_mut_ptr(), first);
            if first < out.len() {
                std::ptr::copy_nonoverlapping(data, out.as_mut_ptr().add(first), out.len() - first);
            }
        }
    }

    /// Copies up to `max` samples' raw payloads out, calling `f` with each; returns what was read.
    pub fn read(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> ReadResult {
        let (head, mut tail) = self.positions();
        let mut res = ReadResult::default();
        // The largest sample: a flow event and a captured packet (see `CAPTURE_MAX`).
        let mut buf = [0u8; 2048];
        while tail < head && res.samples < max {
            let mut hdr = [0u8; 8];
            self.copy_out(tail, &mut hdr);
            let kind = u32::from_ne_bytes(hdr[0..4].try_into().expect("4 bytes"));
            let size = u16::from_ne_bytes(hdr[6..8].try_into().expect("2 bytes")) as usize;
            if size < 8 {
                break; // corrupt header: stop rather than spin
            }
            match kind {
                PERF_RECORD_SAMPLE if size >= 12 => {
                    let mut len = [0u8; 4];
                    self.copy_out(tail + 8, &mut len);
                    let raw = (u32::from_ne_bytes(len) as usize)
                        .min(size - 12)
                        .min(buf.len());
                    self.copy_out(tail + 12, &mut buf[..raw]);
                    f(&buf[..raw]);
                    res.samples += 1;
                }
                PERF_RECORD_LOST if size >= 24 => {
                    let mut lost = [0u8; 8];
                    self.copy_out(tail + 16, &mut lost);
                    res.lost += u64::from_ne_bytes(lost);
                }
                _ => {}
            }
            tail += size as u64;
        }
        fence(Ordering::Release);
        // SAFETY: data_tail is ours to write (it tells the kernel what we consumed).
        unsafe { std::ptr::write_volatile(self.base.add(DATA_TAIL_OFFSET) as *mut u64, tail) };
        res
    }
}

impl Drop for PerfRing {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once.
        unsafe { libc::munmap(self.base.cast(), self.mmap_len) };
    }
}

/// `bpf(BPF_MAP_UPDATE_ELEM)` of a perf event array: index `cpu` → perf fd.
fn map_update_fd(map_fd: RawFd, cpu: u32, perf_fd: RawFd) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let key = cpu;
    let value = perf_fd as u32;
    let attr = Attr {
        map_fd: map_fd as u32,
        pad: 0,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        flags: 0,
    };
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    // SAFETY: bpf syscall with a valid attr of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            &attr as *const Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
