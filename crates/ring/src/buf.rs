//! Buffers that operations own while the kernel uses them.
//!
//! An operation takes its buffer by value and gives it back with the result, so safe code can not
//! touch the memory while the kernel may read or write it. [`IoBuf`] is a buffer the kernel reads
//! (writes, sends), [`IoBufMut`] one it fills (reads, receives): it fills the *spare capacity*
//! after the initialised part and the completion extends the initialised length.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::rc::Rc;

/// A buffer whose memory stays at the same address while it is owned by an operation.
///
/// # Safety
/// `stable_ptr` must point to `bytes_init` initialised bytes that stay valid and do not move
/// while the value is not accessed (even if the value itself is moved).
pub unsafe trait IoBuf: 'static {
    /// Start of the memory.
    fn stable_ptr(&self) -> *const u8;
    /// Number of initialised bytes (what a write sends).
    fn bytes_init(&self) -> usize;
}

/// A buffer the kernel can fill.
///
/// # Safety
/// As [`IoBuf`]; in addition `stable_mut_ptr` must be valid for writes of `bytes_total` bytes.
pub unsafe trait IoBufMut: IoBuf {
    /// Start of the memory, writable.
    fn stable_mut_ptr(&mut self) -> *mut u8;
    /// Total capacity in bytes.
    fn bytes_total(&self) -> usize;
    /// Marks the first `n` bytes initialised.
    ///
    /// # Safety
    /// The first `n` bytes must have been initialised (by the kernel).
    unsafe fn set_init(&mut self, n: usize);
}

// SAFETY: a Vec's heap allocation does not move when the Vec value moves, and we never
// reallocate it while it is owned by an operation.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: see `IoBuf for Vec<u8>`; capacity bytes are allocated and writable.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, n: usize) {
        if n > self.len() {
            // SAFETY: the caller guarantees the bytes up to `n` (<= capacity) are initialised.
            unsafe { self.set_len(n) }
        }
    }
}

// SAFETY: a boxed slice never moves or changes size.
unsafe impl IoBuf for Box<[u8]> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: static memory lives forever and is never written through this impl.
unsafe impl IoBuf for &'static [u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: the String's heap allocation does not move when the value moves.
unsafe impl IoBuf for String {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

/// Memory registered with one ring (`IORING_REGISTER_BUFFERS`), cut into equal buffers.
pub(crate) struct PoolMemory {
    base: NonNull<u8>,
    layout: Layout,
    buf_size: usize,
    count: usize,
    free: RefCell<Vec<u16>>,
    /// Identifies the ring the memory is registered with.
    pub(crate) ring_id: u64,
}

impl PoolMemory {
    pub(crate) fn new(count: usize, buf_size: usize, ring_id: u64) -> std::io::Result<Rc<Self>> {
        let invalid =
            || std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad buffer pool size");
        if count == 0 || count > u16::MAX as usize || buf_size == 0 || buf_size > u32::MAX as usize
        {
            return Err(invalid());
        }
        let total = count.checked_mul(buf_size).ok_or_else(invalid)?;
        let layout = Layout::from_size_align(total, 4096).map_err(|_| invalid())?;
        // SAFETY: `layout` has non-zero size (count and buf_size are non-zero).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let base = NonNull::new(ptr)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
        Ok(Rc::new(PoolMemory {
            base,
            layout,
            buf_size,
            count,
            free: RefCell::new((0..count as u16).rev().collect()),
            ring_id,
        }))
    }

    pub(crate) fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.count)
            .map(|i| libc::iovec {
                // SAFETY: i * buf_size < total size of the allocation.
                iov_base: unsafe { self.base.as_ptr().add(i * self.buf_size) }.cast(),
                iov_len: self.buf_size,
            })
            .collect()
    }
}

impl Drop for PoolMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout. No operation can still use it: each
        // in-flight fixed read/write owns a `FixedBuf`, which keeps this memory alive.
        unsafe { alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

/// A pool of buffers registered with a ring: [`BufPool::get`] hands out [`FixedBuf`]s that
/// return themselves to the pool on drop. Used with `ReadFixed` / `WriteFixed`.
#[derive(Clone)]
pub struct BufPool {
    pub(crate) mem: Rc<PoolMemory>,
}

impl BufPool {
    /// Takes a free buffer (empty: length 0, capacity [`BufPool::buf_size`]), or `None` when all
    /// are in use.
    pub fn get(&self) -> Option<FixedBuf> {
        let index = self.mem.free.borrow_mut().pop()?;
        Some(FixedBuf {
            mem: self.mem.clone(),
            index,
            len: 0,
        })
    }

    /// Size of each buffer in bytes.
    pub fn buf_size(&self) -> usize {
        self.mem.buf_size
    }

    /// Number of buffers currently free.
    pub fn available(&self) -> usize {
        self.mem.free.borrow().len()
    }
}

/// One registered buffer from a [`BufPool`]; returns to its pool when dropped.
pub struct FixedBuf {
    mem: Rc<PoolMemory>,
    index: u16,
    len: usize,
}

impl FixedBuf {
    /// Index of the buffer in the ring's registered buffer table.
    pub fn buf_index(&self) -> u16 {
        self.index
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.mem.buf_size
    }

    /// Sets the initialised length to zero.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Copies `data` into the buffer (replacing its contents); returns how many bytes fit.
    pub fn fill_from(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.capacity());
        // SAFETY: `n` <= capacity; the regions cannot overlap (`data` is a shared borrow and we
        // hold the only handle to this buffer).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr(), n) };
        self.len = n;
        n
    }

    pub(crate) fn ring_id(&self) -> u64 {
        self.mem.ring_id
    }

    fn ptr(&self) -> *mut u8 {
        // SAFETY: index < count, so the offset stays inside the allocation.
        unsafe {
            self.mem
                .base
                .as_ptr()
                .add(self.index as usize * self.mem.buf_size)
        }
    }
}

impl Deref for FixedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are initialised (allocation is zeroed) and owned by us.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }
}

impl DerefMut for FixedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and we hold `&mut self`, the only handle to this buffer.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.len) }
    }
}

impl Drop for FixedBuf {
    fn drop(&mut self) {
        self.mem.free.borrow_mut().push(self.index);
    }
}

// SAFETY: the buffer's memory belongs to the pool allocation, which the `Rc` keeps alive and
// which never moves.
unsafe impl IoBuf for FixedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
}

// SAFETY: `capacity` bytes from `ptr` are inside the pool allocation and writable.
unsafe impl IoBufMut for FixedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, n: usize) {
        if n > self.len {
            self.len = n.min(self.capacity());
        }
    }
}

/// A fixed-size buffer shared by the operations of one linked chain (e.g. the read and the write
/// of a small-file copy). Safe code can see its bytes only through [`SharedBuf::into_vec`], which
/// succeeds only once no operation holds a clone any more (each operation keeps its clone until
/// its final completion).
pub struct SharedBuf {
    mem: Rc<SharedMem>,
}

struct SharedMem {
    ptr: NonNull<u8>,
    len: usize,
}

impl SharedBuf {
    /// A zeroed buffer of exactly `len` bytes.
    pub fn new(len: usize) -> SharedBuf {
        let v: Box<[u8]> = vec![0u8; len].into_boxed_slice();
        let raw = Box::into_raw(v) as *mut u8;
        let ptr = NonNull::new(raw).unwrap_or(NonNull::dangling());
        SharedBuf {
            mem: Rc::new(SharedMem { ptr, len }),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.mem.len
    }

    /// True when the length is zero.
    pub fn is_empty(&self) -> bool {
        self.mem.len == 0
    }

    /// A second handle for another operation of the same chain (crate-internal: clones must
    /// only go into operations, never stay in safe code, or `into_vec` could race the kernel).
    pub(crate) fn share(&self) -> SharedBuf {
        SharedBuf {
            mem: self.mem.clone(),
        }
    }

    /// The bytes, once no operation holds the buffer any more; else the buffer back.
    pub fn into_vec(self) -> Result<Vec<u8>, SharedBuf> {
        match Rc::try_unwrap(self.mem) {
            Ok(mem) => {
                let mem = std::mem::ManuallyDrop::new(mem);
                // SAFETY: `ptr`/`len` came from `Box<[u8]>::into_raw` in `new` and we are the sole
                // owner; ManuallyDrop prevents the double free.
                let b = unsafe {
                    Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                        mem.ptr.as_ptr(),
                        mem.len,
                    ))
                };
                Ok(b.into_vec())
            }
            Err(mem) => Err(SharedBuf { mem }),
        }
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.mem.ptr.as_ptr()
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated by `Box<[u8]>` in `SharedBuf::new`; this is the last owner.
            drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    self.ptr.as_ptr(),
                    self.len,
                ))
            });
        }
    }
}

// SAFETY: the allocation never moves; its bytes are initialised (zeroed at creation).
unsafe impl IoBuf for SharedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr()
    }
    fn bytes_init(&self) -> usize {
        self.mem.len
    }
}
