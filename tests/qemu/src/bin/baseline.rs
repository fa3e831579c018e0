//! The runtime of the firmware binaries without the core (heap, panic handler, semihosting
//! exit): the baseline the size report subtracts from `minimal`.

#![no_std]
#![no_main]

use expertslab_qemu::{entry, exit, init_heap};

#[entry]
fn main() -> ! {
    init_heap();
    let heap_works = alloc_check();
    exit(heap_works)
}

fn alloc_check() -> bool {
    extern crate alloc;
    let v = alloc::vec![1u8; 16];
    v.iter().map(|&b| u32::from(b)).sum::<u32>() == 16
}
