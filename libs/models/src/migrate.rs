//! Moving the weights read in place from the mapped file into 2 MiB huge
//! pages while the model runs.
//!
//! A mapping loads fastest (nothing is read before it is used), but every
//! token streams all the weights through 4 KiB pages and their TLB misses;
//! the same weights in huge pages generate 10–18% faster here (`--no-mmap`
//! pays for that with a full read before the first token). So the model
//! starts on the mapping, and from its second forward pass on each pass first
//! moves one slice of the weights (16 MiB, whole tensors): copy the bytes,
//! point the tensors there, give the mapping's pages of the slice back to the
//! kernel so the resident size does not grow. No graph runs between passes,
//! so a tensor is never read while it moves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ggml::{Buffer, Tensor};

use crate::Result;

/// Bytes moved before one forward pass (about 5 ms of copying and page
/// faults here; a SmolLM2 token takes 10 ms).
const SLICE: usize = 16 << 20;
/// Bytes copied before their pages on the mapping are given back.
const PIECE: usize = 2 << 20;

pub(crate) struct Migration {
    /// The mapped file the tensors point into now.
    src: Arc<dyn AsRef<[u8]> + Send + Sync>,
    /// File-sized huge-page buffer: a tensor moves to its own file offset.
    dst: Buffer,
    /// Tensors placed on the mapping and their file offsets, by offset (a
    /// tied output shares its embeddings' offset).
    items: Vec<(Tensor, usize)>,
    /// First item not moved yet.
    next: usize,
    passes: usize,
    done: Arc<AtomicBool>,
}

impl Migration {
    /// Plans moving `items` (tensors placed at file offsets in `src`).
    pub(crate) fn new(
        src: Arc<dyn AsRef<[u8]> + Send + Sync>,
        mut items: Vec<(Tensor, usize)>,
    ) -> Result<Migration> {
        items.sort_by_key(|&(_, off)| off);
        let dst = Buffer::huge_pages((*src).as_ref().len())?;
        Ok(Migration {
            src,
            dst,
            items,
            next: 0,
            passes: 0,
            done: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Set once every tensor has moved.
    pub(crate) fn done_flag(&self) -> Arc<AtomicBool> {
        self.done.clone()
    }

    /// Before a forward pass: moves the next slice (not before the first
    /// pass, which the time to first token counts).
    pub(crate) fn before_pass(&mut self) {
        self.passes += 1;
        if self.passes == 1 || self.next == self.items.len() {
            return;
        }
        let src = (*self.src).as_ref();
        let start = self.items[self.next].1;
        let (mut end, mut k) = (start, self.next);
        while k < self.items.len() && (end - start < SLICE || self.items[k].1 < end) {
            let (t, off) = self.items[k];
            end = end.max(off + t.n_bytes());
            k += 1;
        }
        // Copy 2 MiB at a time, giving each piece's pages back at once, so
        // the resident size grows by one piece at most.
        let mut pos = start;
        while pos < end {
            let piece_end = end.min((pos / PIECE + 1) * PIECE);
            self.dst.write(pos, &src[pos..piece_end]);
            // SAFETY: `src` is the read-only file mapping (migrations are
            // made only for mapped loads) and no graph runs now: should a
            // page be read before its tensor moves below, it faults back in.
            unsafe { ggml::release_file_pages(&src[pos..piece_end]) };
            pos = piece_end;
        }
        for &(t, off) in &self.items[self.next..k] {
            self.dst.replace(t, off);
        }
        self.next = k;
        if k == self.items.len() {
            self.done.store(true, Ordering::Relaxed);
        }
    }
}
