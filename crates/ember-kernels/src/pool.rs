//! Host buffers kept for reuse by the thread that freed them.
//!
//! A training step of the host kernels fills a few megabytes of tape per shard. Allocations that
//! large come fresh from the operating system on every step and are zeroed there page by page:
//! page faults took about a tenth of a step. The threads that run the shards live as long as the
//! process, so each keeps the buffers it frees and hands them out again.

use std::cell::RefCell;

/// Buffers smaller than this are left to the allocator, which keeps them anyway.
const SMALLEST: usize = 16 * 1024;
/// Buffers a thread keeps at most.
const KEPT: usize = 48;

thread_local! {
    static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` values for a caller that writes every one before reading it: a reused
/// buffer keeps its old values, which saves a pass over the memory.
pub fn scratch(len: usize) -> Vec<f32> {
    let mut buffer = take(len);
    buffer.truncate(len);
    buffer.resize(len, 0.0);
    buffer
}

/// A copy of `values` in a reused buffer.
pub fn copied(values: &[f32]) -> Vec<f32> {
    let mut buffer = take(values.len());
    buffer.clear();
    buffer.extend_from_slice(values);
    buffer
}

/// An empty buffer with room for `len` values, for a caller that writes them through its spare
/// capacity.
pub fn with_capacity(len: usize) -> Vec<f32> {
    let mut buffer = take(len);
    buffer.clear();
    buffer
}

/// A buffer with room for `len` values, its contents as it was left: the smallest kept one that
/// fits, else a new one.
fn take(len: usize) -> Vec<f32> {
    if len < SMALLEST {
        return Vec::with_capacity(len);
    }
    FREE.with(|free| {
        let mut free = free.borrow_mut();
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, buffer)| buffer.capacity() >= len)
            .min_by_key(|(_, buffer)| buffer.capacity())
            .map(|(index, _)| index);
        match best {
            Some(index) => free.swap_remove(index),
            None => Vec::with_capacity(len),
        }
    })
}

/// Gives `buffer` back for reuse on this thread.
pub fn recycle(buffer: Vec<f32>) {
    if buffer.capacity() < SMALLEST {
        return;
    }
    // A thread that is exiting has no pool left; its buffer is simply freed.
    let _ = FREE.try_with(|free| {
        let mut free = free.borrow_mut();
        if free.len() < KEPT {
            free.push(buffer);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_buffer_is_handed_out_again() {
        let first = scratch(SMALLEST * 2);
        let address = first.as_ptr();
        recycle(first);
        let second = scratch(SMALLEST);
        assert_eq!(second.as_ptr(), address);
        assert_eq!(second.len(), SMALLEST);
        recycle(second);
        assert_eq!(scratch(SMALLEST * 2 + 1).len(), SMALLEST * 2 + 1);
        assert_eq!(copied(&[1.0, 2.0]), vec![1.0, 2.0]);
        let empty = with_capacity(SMALLEST * 3);
        assert!(empty.is_empty() && empty.capacity() >= SMALLEST * 3);
    }
}
