# The smallest guest: print a line on the console port, report a value, finish with 0.
.include "common.inc"
.code32
.text
.globl _start
_start:
    mov $message, %esi
1:  lodsb
    test %al, %al
    jz 2f
    mov $CONSOLE_PORT, %dx
    out %al, %dx
    jmp 1b
2:  REPORT $0x600D
    REPORT BI_MAGIC(%ebx)
    FINISH $0

message:
    .asciz "hello from a platpass guest\n"
