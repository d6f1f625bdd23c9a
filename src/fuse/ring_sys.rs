//! The unsafe half of the FUSE-over-io_uring transport ([`super::ring`]): the memory the kernel
//! reads and writes behind our back, and the io_uring that hands it over.
//!
//! - [`EntryBufs`]: one ring entry's buffers, the 288-byte `fuse_uring_req_header` and the
//!   payload buffer, plus the two-element `iovec` array that registers them. Safe code reaches
//!   their bytes only through `&self`/`&mut self`, and an `EntryBufs` is only ever outside a
//!   [`Uring`] while no command referencing it is in flight.
//! - [`Uring`]: one queue's io_uring (SQE128) on a `/dev/fuse` descriptor. It takes an entry's
//!   buffers by value when it submits a command on them and gives them back only with that
//!   command's completion ([`Completion::Entry`]); the same for the 8-byte buffer of the eventfd
//!   read that wakes the queue. Buffers still in flight when it is dropped are leaked, never
//!   freed under the kernel.
//!
//! This module is the only place of the transport with `unsafe` code; each block says why it
//! holds. Layouts follow `include/uapi/linux/fuse.h` (ABI 7.42+).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use io_uring::squeue::Entry128;
use io_uring::{IoUring, cqueue, opcode, types};

/// `sizeof(struct fuse_uring_req_header)`: `in_out[128]`, `op_in[128]`, `fuse_uring_ent_in_out`.
pub(super) const HEADER_SIZE: usize = 288;

/// `enum fuse_uring_cmd`: 0 is rejected with EINVAL by a ready connection, before the kernel
/// looks at anything else; a harmless probe of the connection's state.
const CMD_INVALID: u32 = 0;
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// `user_data` of the commands that are not on an entry (entries use their index).
const TOKEN_WAKE: u64 = u64::MAX;
const TOKEN_PROBE: u64 = u64::MAX - 1;
const TOKEN_CANCEL: u64 = u64::MAX - 2;

/// Registered-file slots of the ring.
const FILE_DEV: types::Fixed = types::Fixed(0);
const FILE_WAKE: types::Fixed = types::Fixed(1);

/// Byte offset of `len` in `struct io_uring_sqe` (opcode u8, flags u8, ioprio u16, fd s32,
/// off u64, addr u64, len u32): the uapi layout, the same on every architecture.
const SQE_LEN_OFFSET: usize = 24;

const _: () = assert!(std::mem::size_of::<Entry128>() == 128);
const _: () = assert!(std::mem::size_of::<io_uring::squeue::Entry>() == 64);

/// Where the payload starts in an entry's mapping; the first page holds the header (at 0) and
/// the `iovec` array (at `IOV_OFFSET`).
const PAYLOAD_OFFSET: usize = 4096;
const IOV_OFFSET: usize = 512;
const _: () = assert!(HEADER_SIZE <= IOV_OFFSET);
const _: () = assert!(IOV_OFFSET + 2 * std::mem::size_of::<libc::iovec>() <= PAYLOAD_OFFSET);
const _: () = assert!(IOV_OFFSET % std::mem::align_of::<libc::iovec>() == 0);

/// One entry's anonymous private mapping: the header in the first page, the payload from the
/// second. Pages are zero-filled on first touch, so an entry costs memory only for the payload
/// bytes requests actually used, whatever its size. The kernel may read and write it (through
/// a registered ring entry) while no Rust reference to it exists.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: a new anonymous mapping at an address of the kernel's choice: no existing
        // memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping of exactly this range, unmapped once; the kernel holds no
        // command on it (an `EntryBufs` in flight is leaked, never dropped).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One ring entry's buffers. Whoever holds an `EntryBufs` (not a [`Uring`] with a command in
/// flight on it) is the only one touching its bytes. Moving it moves two words: the bytes, and
/// the `iovec` array a REGISTER points the kernel to, stay where they are in the mapping.
pub(super) struct EntryBufs {
    map: Mapping,
    payload_len: usize,
}

// SAFETY: the raw pointer is an owned mapping (no sharing); the kernel touches it only while
// a `Uring` holds the `EntryBufs`, never concurrently with its holder.
unsafe impl Send for EntryBufs {}

impl EntryBufs {
    /// Maps the header and a payload buffer of `payload_len` bytes (zero-filled), and writes
    /// the `iovec` array (header, payload) that registers them.
    pub(super) fn new(payload_len: usize) -> io::Result<EntryBufs> {
        let total = payload_len
            .checked_add(PAYLOAD_OFFSET)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let map = Mapping::new(total)?;
        let base = map.ptr.as_ptr();
        let iov = [
            libc::iovec {
                iov_base: base.cast(),
                iov_len: HEADER_SIZE,
            },
            libc::iovec {
                // SAFETY: PAYLOAD_OFFSET < total: inside the mapping.
                iov_base: unsafe { base.add(PAYLOAD_OFFSET) }.cast(),
                iov_len: payload_len,
            },
        ];
        // SAFETY: IOV_OFFSET + size_of_val(&iov) <= PAYLOAD_OFFSET <= total, and IOV_OFFSET is
        // a multiple of the iovec alignment from a page-aligned base: an aligned write inside
        // the mapping, which nothing else references yet.
        unsafe { base.add(IOV_OFFSET).cast::<[libc::iovec; 2]>().write(iov) };
        Ok(EntryBufs { map, payload_len })
    }

    /// The address of the `iovec` array for `sqe->addr`.
    fn iov_addr(&self) -> u64 {
        self.map.ptr.as_ptr() as u64 + IOV_OFFSET as u64
    }

    pub(super) fn header(&self) -> &[u8; HEADER_SIZE] {
        // SAFETY: the mapping starts with HEADER_SIZE initialized (zero-filled, then written
        // only as bytes) bytes; no command is in flight on it (see the type's doc), so nothing
        // writes them while this shared borrow of `self` lasts.
        unsafe { &*self.map.ptr.as_ptr().cast::<[u8; HEADER_SIZE]>() }
    }

    pub(super) fn header_mut(&mut self) -> &mut [u8; HEADER_SIZE] {
        // SAFETY: as in `header`, and `&mut self` makes this borrow the only one.
        unsafe { &mut *self.map.ptr.as_ptr().cast::<[u8; HEADER_SIZE]>() }
    }

    pub(super) fn payload(&self) -> &[u8] {
        // SAFETY: payload_len initialized bytes from PAYLOAD_OFFSET, inside the mapping; not
        // written by anyone while `self` is borrowed.
        unsafe {
            std::slice::from_raw_parts(self.map.ptr.as_ptr().add(PAYLOAD_OFFSET), self.payload_len)
        }
    }

    pub(super) fn payload_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `payload`, exclusive through `&mut self`.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.map.ptr.as_ptr().add(PAYLOAD_OFFSET),
                self.payload_len,
            )
        }
    }
}

/// What a command on an entry was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CmdKind {
    Register,
    CommitAndFetch,
}

/// A completion, with the buffers it gives back.
pub(super) enum Completion {
    /// The command on entry `index` finished: `res` 0 with a request in `bufs`, or -errno.
    Entry {
        index: usize,
        kind: CmdKind,
        res: i32,
        bufs: EntryBufs,
    },
    /// The eventfd read finished (`res` 8, or -errno).
    Wake { res: i32 },
    /// The probe finished: -EINVAL from a connection ready for REGISTER, else why not.
    Probe { res: i32 },
    /// The cancel of the eventfd read finished.
    Cancel,
}

/// One queue's io_uring on a `/dev/fuse` descriptor. Single issuer: used by one thread only.
pub(super) struct Uring {
    ring: IoUring<Entry128, cqueue::Entry>,
    /// The entries' buffers while a command is in flight on them.
    in_flight: Vec<Option<(CmdKind, EntryBufs)>>,
    /// The eventfd read's buffer; owned through this raw pointer (from `Box::leak`).
    wake_buf: NonNull<u64>,
    wake_armed: bool,
}

impl Uring {
    /// A ring for `entries` ring entries on `dev` (a `/dev/fuse` descriptor) that also reads the
    /// eventfd `wake`. Both descriptors are registered files of the ring (no lookup per
    /// command) and must stay open until the ring is dropped.
    pub(super) fn new(
        dev: BorrowedFd<'_>,
        wake: BorrowedFd<'_>,
        entries: usize,
    ) -> io::Result<Uring> {
        let sq =
            u32::try_from(entries + 4).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // Task work (a request handed to an entry) runs only when this thread waits for
        // completions: no interruption of the handler, one wake-up per request.
        let ring = match IoUring::<Entry128, cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(sq)
        {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                IoUring::<Entry128, cqueue::Entry>::builder().build(sq)?
            }
            Err(e) => return Err(e),
        };
        ring.submitter()
            .register_files(&[dev.as_raw_fd(), wake.as_raw_fd()])?;
        let wake_buf = NonNull::from(Box::leak(Box::new(0u64)));
        Ok(Uring {
            ring,
            in_flight: (0..entries).map(|_| None).collect(),
            wake_buf,
            wake_armed: false,
        })
    }

    /// Entries with a command in flight.
    fn entries_in_flight(&self) -> usize {
        self.in_flight.iter().filter(|s| s.is_some()).count()
    }

    /// Queues a REGISTER of entry `index` (its buffers `bufs`) on queue `qid`.
    pub(super) fn register(&mut self, index: usize, qid: u16, bufs: EntryBufs) -> io::Result<()> {
        self.push_entry(index, CmdKind::Register, qid, 0, bufs)
    }

    /// Queues a COMMIT_AND_FETCH of entry `index`: the reply to request `commit_id` is in
    /// `bufs` (out header, payload, `payload_sz`), and the entry waits for the next request.
    pub(super) fn commit_and_fetch(
        &mut self,
        index: usize,
        qid: u16,
        commit_id: u64,
        bufs: EntryBufs,
    ) -> io::Result<()> {
        self.push_entry(index, CmdKind::CommitAndFetch, qid, commit_id, bufs)
    }

    fn push_entry(
        &mut self,
        index: usize,
        kind: CmdKind,
        qid: u16,
        commit_id: u64,
        bufs: EntryBufs,
    ) -> io::Result<()> {
        if self.in_flight.get(index).is_none_or(|s| s.is_some()) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let op = match kind {
            CmdKind::Register => CMD_REGISTER,
            CmdKind::CommitAndFetch => CMD_COMMIT_AND_FETCH,
        };
        let sqe = uring_cmd(op, qid, commit_id, Some(bufs.iov_addr())).user_data(index as u64);
        // SAFETY: the iovec array and the two buffers it points to are the mapping of `bufs`,
        // which goes into `in_flight` right below and leaves it only with this command's
        // completion (`pop`) or is leaked (`Drop`): valid, and untouched by us, for the whole
        // command.
        unsafe { self.push(&sqe)? };
        self.in_flight[index] = Some((kind, bufs));
        Ok(())
    }

    /// Queues a probe of the connection (an INVALID command); its [`Completion::Probe`] tells
    /// whether REGISTER can work now (-EINVAL), not yet (-EAGAIN: INIT not answered), or not
    /// at all (-EOPNOTSUPP, -ENOTCONN, ...).
    pub(super) fn probe(&mut self, qid: u16) -> io::Result<()> {
        let sqe = uring_cmd(CMD_INVALID, qid, 0, None).user_data(TOKEN_PROBE);
        // SAFETY: the command carries no pointer (addr 0).
        unsafe { self.push(&sqe) }
    }

    /// Queues the eventfd read that wakes the queue thread (no-op when already queued).
    pub(super) fn arm_wake(&mut self) -> io::Result<()> {
        if self.wake_armed {
            return Ok(());
        }
        let sqe: Entry128 = opcode::Read::new(FILE_WAKE, self.wake_buf.as_ptr().cast(), 8)
            .build()
            .user_data(TOKEN_WAKE)
            .into();
        // SAFETY: `wake_buf` is an 8-byte allocation owned by `self` that we neither read nor
        // free while the read is armed (`Drop` leaks it if still armed).
        unsafe { self.push(&sqe)? };
        self.wake_armed = true;
        Ok(())
    }

    /// Queues the cancel of the eventfd read (before dropping the ring: the read completes,
    /// with -ECANCELED, and its buffer can be freed).
    pub(super) fn cancel_wake(&mut self) -> io::Result<bool> {
        if !self.wake_armed {
            return Ok(false);
        }
        let sqe: Entry128 = opcode::AsyncCancel::new(TOKEN_WAKE)
            .build()
            .user_data(TOKEN_CANCEL)
            .into();
        // SAFETY: the cancel carries no buffer.
        unsafe { self.push(&sqe)? };
        Ok(true)
    }

    /// # Safety
    /// Every buffer `sqe` points to must stay valid and unused by us until its completion.
    unsafe fn push(&mut self, sqe: &Entry128) -> io::Result<()> {
        // SAFETY: passed on from the caller.
        if unsafe { self.ring.submission().push(sqe) }.is_ok() {
            return Ok(());
        }
        // Full: hand what is queued to the kernel, then there is room.
        self.ring.submit()?;
        // SAFETY: as above.
        unsafe { self.ring.submission().push(sqe) }
            .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))
    }

    /// Submits what is queued without waiting; returns how many were submitted.
    pub(super) fn submit(&mut self) -> io::Result<usize> {
        self.ring.submit()
    }

    /// Whether commands are queued and not yet submitted.
    pub(super) fn has_queued(&mut self) -> bool {
        !self.ring.submission().is_empty()
    }

    /// Submits what is queued and waits for at least `want` completions (one system call).
    pub(super) fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        self.ring.submit_and_wait(want)
    }

    /// The next completion, if one is there.
    pub(super) fn pop(&mut self) -> Option<Completion> {
        let cqe = self.ring.completion().next()?;
        let res = cqe.result();
        Some(match cqe.user_data() {
            TOKEN_WAKE => {
                self.wake_armed = false;
                Completion::Wake { res }
            }
            TOKEN_PROBE => Completion::Probe { res },
            TOKEN_CANCEL => Completion::Cancel,
            i => {
                let index = i as usize;
                match self.in_flight.get_mut(index).and_then(Option::take) {
                    Some((kind, bufs)) => Completion::Entry {
                        index,
                        kind,
                        res,
                        bufs,
                    },
                    None => {
                        log::error!("io_uring: completion for an unknown entry {i}");
                        return self.pop();
                    }
                }
            }
        })
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        let leaked = self.entries_in_flight();
        if leaked > 0 {
            log::warn!(
                "io_uring: {leaked} entries still in the kernel's hands: leaking their buffers"
            );
            for slot in &mut self.in_flight {
                if let Some((_, bufs)) = slot.take() {
                    std::mem::forget(bufs);
                }
            }
        }
        if !self.wake_armed {
            // SAFETY: from `Box::leak` in `new`; no read is armed on it, freed once.
            drop(unsafe { Box::from_raw(self.wake_buf.as_ptr()) });
        }
    }
}

/// An `IORING_OP_URING_CMD` SQE on the `/dev/fuse` descriptor with a `fuse_uring_cmd_req`
/// (`flags` 0, `commit_id`, `qid`) in its command area and, with `iov`, `addr` = that iovec
/// array and `len` = 2.
fn uring_cmd(op: u32, qid: u16, commit_id: u64, iov: Option<u64>) -> Entry128 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    let mut sqe = opcode::UringCmd80::new(FILE_DEV, op)
        .cmd(cmd)
        .addr(iov)
        .build();
    if iov.is_some() {
        set_sqe_len(&mut sqe, 2);
    }
    sqe
}

/// Sets `sqe->len`, which `opcode::UringCmd80` has no setter for (io-uring 0.7).
fn set_sqe_len(sqe: &mut Entry128, len: u32) {
    let p: *mut Entry128 = sqe;
    // SAFETY: `Entry128` is `#[repr(C)] struct Entry128(Entry, [u8; 64])` and `Entry` is
    // `#[repr(C)] struct Entry(io_uring_sqe)` with `io_uring_sqe` a `#[repr(C)]` mirror of the
    // kernel's struct (sizes asserted above), so bytes 24..28 of `*sqe` are its `len: u32`
    // field: an aligned (offset 24 of an 8-aligned struct) u32 write into a live, exclusively
    // borrowed value; any u32 is a valid `len`.
    unsafe { p.cast::<u8>().add(SQE_LEN_OFFSET).cast::<u32>().write(len) }
}
