# Write the loop counter to the 32-bit register at BI_READ_ADDR BI_COUNT times and report
# the TSC cycles the loop took (the guest-visible cost of those stores; for a trapped
# register, of a posted or a replied write).
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
    test %ecx, %ecx
    jz done
1:  mov %ecx, (%esi)
    dec %ecx
    jnz 1b
done:
    rdtsc
    sub %edi, %eax
    sbb %ebp, %edx
    mov %eax, %edi                  # low 32 bits of the cycle count
    xor %eax, %eax
    REPORT %eax
    REPORT %edi
    FINISH $0
