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

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ggml::{Buffer, FileMap, Weight};

use crate::Result;

/// Bytes moved before one forward pass (about 5 ms of copying and page
/// faults here; a SmolLM2 token takes 10 ms).
const SLICE: usize = 16 << 20;
/// Bytes copied before their pages on the mapping are given back.
const PIECE: usize = 2 << 20;

pub(crate) struct Migration {
    /// The mapped file the weights point into now: a read-only file
    /// mapping by type, the one memory whose pages may be given back.
    src: Arc<FileMap>,
    /// File-sized huge-page buffer: a weight moves to its own file offset.
    dst: Rc<Buffer>,
    /// Weights placed on the mapping and their file offsets, by offset (a
    /// tied output shares its embeddings' offset).
    items: Vec<(Weight, usize)>,
    /// First item not moved yet.
    next: usize,
    passes: usize,
    done: Arc<AtomicBool>,
}

impl Migration {
    /// Plans moving `items` (weights placed at file offsets in `src`).
    pub(crate) fn new(src: Arc<FileMap>, mut items: Vec<(Weight, usize)>) -> Result<Migration> {
        items.sort_by_key(|&(_, off)| off);
        let dst = Rc::new(Buffer::huge_pages((*src).as_ref().len())?);
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
            let (w, off) = &self.items[k];
            end = end.max(off + w.n_bytes());
            k += 1;
        }
        // Copy 2 MiB at a time, giving each piece's pages back at once, so
        // the resident size grows by one piece at most.
        let mut pos = start;
        while pos < end {
            let piece_end = end.min((pos / PIECE + 1) * PIECE);
            self.dst.write(pos, &src[pos..piece_end]);
            // a file mapping: should a page be read before its weight moves
            // below, it faults back in unchanged
            ggml::release_file_pages(&self.src, pos..piece_end);
            pos = piece_end;
        }
        for (w, off) in &self.items[self.next..k] {
            w.move_to(&self.dst, *off);
        }
        self.next = k;
        if k == self.items.len() {
            self.done.store(true, Ordering::Relaxed);
        }
    }
}
