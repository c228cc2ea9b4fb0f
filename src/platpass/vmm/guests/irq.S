# Take a device interrupt through the IOAPIC and the local APIC.
# Set-up: an IDT whose vector IRQ_VECTOR is `isr`, the LAPIC software-enabled, IOAPIC pin
# BI_GSI routed to IRQ_VECTOR on APIC 0 (level- or edge-triggered per BI_LEVEL). Then the
# program programs the device: up to two set-up writes (BI_SETUPn_VALUE to BI_SETUPn_ADDR,
# skipped when the address is 0), then the arming write of BI_ARM_VALUE to BI_ARM_ADDR
# (with MODE_ARM_RELATIVE the value written is *BI_READ_ADDR + BI_ARM_VALUE, e.g. an RTC
# alarm one second from now), and waits with `sti; hlt`. With BI_ARM_ADDR 0 the host
# raises the line.
# The ISR acknowledges at the device (BI_ACK_VALUE to BI_ACK_ADDR), then EOIs.
# BI_MODE bit 0 ("delayed EOI"): the first ISR entry neither acks nor EOIs; the main loop
# spins BI_COUNT iterations with interrupts enabled, reports how many interrupts it saw
# (1: the still-asserted level line was not re-delivered without EOI), then EOIs; the line,
# still asserted at the device, is delivered again and the second entry acks and EOIs.
# Reports: interrupt count after the wait (delayed mode), final interrupt count, and the
# TSC cycles from the arming write to the first ISR entry.
.include "common.inc"
.code32
.text
.globl _start
_start:
    IRQ_SETUP                            # IDT, LAPIC, IOAPIC pin BI_GSI (common.inc)

    mov BI_SETUP1_ADDR(%ebx), %esi
    test %esi, %esi
    jz 7f
    mov BI_SETUP1_VALUE(%ebx), %eax
    mov %eax, (%esi)
7:  mov BI_SETUP2_ADDR(%ebx), %esi
    test %esi, %esi
    jz 8f
    mov BI_SETUP2_VALUE(%ebx), %eax
    mov %eax, (%esi)
8:  mov BI_ARM_VALUE(%ebx), %ecx
    testl $MODE_ARM_RELATIVE, BI_MODE(%ebx)
    jz 9f
    mov BI_READ_ADDR(%ebx), %esi
    add (%esi), %ecx
9:  rdtsc
    mov %eax, armed_tsc
    mov BI_ARM_ADDR(%ebx), %esi
    test %esi, %esi
    jz 3f
    mov %ecx, (%esi)
3:
wait_first:                              # cli/test/sti;hlt: no wake-up can be lost
    cli
    cmpl $0, irq_count
    jne got_first
    sti
    hlt
    jmp wait_first
got_first:
    sti
    testl $MODE_DELAYED_EOI, BI_MODE(%ebx)
    jz finish
    # delayed-EOI mode: the ISR returned without EOI; give a re-delivery every chance
    mov BI_COUNT(%ebx), %ecx
4:  pause
    dec %ecx
    jnz 4b
    mov irq_count, %eax
    REPORT %eax
    movl $1, eoi_done
    movl $0, LAPIC + LAPIC_EOI
wait_second:
    cli
    cmpl $2, irq_count
    jae finish
    sti
    hlt
    jmp wait_second
finish:
    cli
    mov irq_count, %eax
    REPORT %eax
    mov first_tsc, %eax
    sub armed_tsc, %eax
    REPORT %eax
    FINISH $0

    IRQ_SUPPORT                          # set_gate, unexpected (common.inc)

isr:
    ISR_ENTRY
    cmpl $0, irq_count
    jne 5f
    rdtsc
    mov %eax, first_tsc
5:  incl irq_count
    mov bootinfo, %edx
    testl $MODE_DELAYED_EOI, BI_MODE(%edx)
    jz ack
    cmpl $0, eoi_done
    je out                               # delayed mode, first entry: no ack, no EOI
ack:
    ACK_EOI
out:
    ISR_RETURN

.data
.align 8
bootinfo:   .long 0
irq_count:  .long 0
eoi_done:   .long 0
armed_tsc:  .long 0
first_tsc:  .long 0
    IDT_DATA
