# A PL011 guest driver: enable the UART, send the boot-info message through UARTDR while
# polling UARTFR.TXFF, wait for UARTFR.BUSY to clear, then report what UARTFR and UARTCR
# read back and how many bytes were sent.
.include "common.inc"
.equ UARTDR,   0x000
.equ UARTFR,   0x018
.equ UARTLCR_H, 0x02C
.equ UARTCR,   0x030
.equ FR_TXFF,  1 << 5
.equ FR_BUSY,  1 << 3
.code32
.text
.globl _start
_start:
    mov BI_UART(%ebx), %edi
    test %edi, %edi
    jz no_uart
    movl $0x70, UARTLCR_H(%edi)          # 8 bits, FIFOs on
    movl $0x301, UARTCR(%edi)            # UARTEN | TXE | RXE
    mov BI_MESSAGE(%ebx), %esi
    xor %ecx, %ecx
next:
    movzbl (%esi), %eax
    test %eax, %eax
    jz drained
wait_room:
    testl $FR_TXFF, UARTFR(%edi)
    jnz wait_room
    mov %eax, UARTDR(%edi)
    inc %esi
    inc %ecx
    jmp next
drained:
    testl $FR_BUSY, UARTFR(%edi)
    jnz drained
    mov UARTFR(%edi), %eax
    REPORT %eax
    mov UARTCR(%edi), %eax
    REPORT %eax
    REPORT %ecx
    FINISH $0
no_uart:
    FINISH $1
