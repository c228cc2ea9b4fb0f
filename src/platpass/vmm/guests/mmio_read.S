# Read the 32-bit register at BI_READ_ADDR BI_COUNT times and report the last value read
# and the TSC cycles the loop took (the guest-visible cost of those accesses).
.include "common.inc"
.code32
.text
.globl _start
_start:
    mov BI_READ_ADDR(%ebx), %esi
    mov BI_COUNT(%ebx), %ecx
    rdtsc
    mov %eax, %edi
    mov %edx, %ebp
    xor %eax, %eax
    test %ecx, %ecx
    jz done
1:  mov (%esi), %eax
    dec %ecx
    jnz 1b
done:
    push %eax
    rdtsc
    sub %edi, %eax
    sbb %ebp, %edx
    mov %eax, %edi                  # low 32 bits of the cycle count
    pop %eax
    REPORT %eax
    REPORT %edi
    FINISH $0
