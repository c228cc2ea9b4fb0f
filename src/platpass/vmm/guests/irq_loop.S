# Take BI_COUNT device interrupts in a row, for latency measurements.
# Same IOAPIC/LAPIC set-up as irq.S (pin BI_GSI, level per BI_LEVEL, vector IRQ_VECTOR).
# Each ISR entry first writes its sequence number to the report port (the VMM timestamps
# that exit), then acks at the device (BI_ACK_VALUE to BI_ACK_ADDR, if set) and EOIs.
# The host raises the interrupts; after BI_COUNT of them the program finishes with 0.
.include "common.inc"
.code32
.text
.globl _start
_start:
    mov %ebx, bootinfo
    xor %ecx, %ecx
1:  mov $unexpected, %eax
    call set_gate
    inc %ecx
    cmp $256, %ecx
    jne 1b
    mov $IRQ_VECTOR, %ecx
    mov $isr, %eax
    call set_gate
    lidt idt_descriptor
    movl $0x1FF, LAPIC + LAPIC_SVR
    mov BI_GSI(%ebx), %ecx
    lea 0x11(,%ecx,2), %eax
    movl %eax, IOAPIC
    movl $0, IOAPIC + 0x10
    lea 0x10(,%ecx,2), %eax
    movl %eax, IOAPIC
    mov $IRQ_VECTOR, %eax
    cmpl $0, BI_LEVEL(%ebx)
    je 2f
    or $(1 << 15), %eax
2:  movl %eax, IOAPIC + 0x10
    REPORT $0                            # ready: the host may start raising
wait:
    cli
    mov irq_count, %eax
    cmp BI_COUNT(%ebx), %eax
    jae done
    sti
    hlt
    jmp wait
done:
    FINISH $0

set_gate:
    lea idt(,%ecx,8), %edx
    mov %ax, (%edx)
    movw $0x08, 2(%edx)
    movw $0x8E00, 4(%edx)
    shr $16, %eax
    mov %ax, 6(%edx)
    ret

isr:
    push %eax
    push %edx
    push %esi
    incl irq_count
    mov irq_count, %eax
    mov $REPORT_PORT, %dx
    out %eax, %dx
    mov bootinfo, %edx
    mov BI_ACK_ADDR(%edx), %esi
    test %esi, %esi
    jz 3f
    mov BI_ACK_VALUE(%edx), %eax
    mov %eax, (%esi)
3:  movl $0, LAPIC + LAPIC_EOI
    pop %esi
    pop %edx
    pop %eax
    IRET_SOFT

unexpected:
    REPORT $0xDEAD
    FINISH $2

.data
.align 8
idt_descriptor:
    .word 256 * 8 - 1
    .long idt
bootinfo:   .long 0
irq_count:  .long 0
.align 8
idt:
    .fill 256 * 8, 1, 0
