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
    IRQ_SETUP                            # IDT, LAPIC, IOAPIC pin BI_GSI (common.inc)
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

    IRQ_SUPPORT                          # set_gate, unexpected (common.inc)

isr:
    ISR_ENTRY
    incl irq_count
    mov irq_count, %eax
    mov $REPORT_PORT, %dx
    out %eax, %dx
    mov bootinfo, %edx
    ACK_EOI
    ISR_RETURN

.data
.align 8
bootinfo:   .long 0
irq_count:  .long 0
    IDT_DATA
